"""Write the float32 twin of a GGUF file: the same metadata, every tensor dequantised.

The in-process engine loads a GGUF by dequantising it to float32 (transformers'
``gguf_file=``), so llama.cpp serving this twin computes with the very weights the
in-process model has; on the quantised file it quantises activations too
(Q4_1 x Q8_1 dot products) and per-token log-probs differ by up to ~0.2 nats.
The served-engine tests compare the two within an fp32 tolerance on the twin.

    python scripts/gguf_f32.py IN.gguf OUT.gguf
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def write_f32_twin(source: Path, target: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        # numpy shapes are the GGUF dimensions reversed; dequantize returns the row-major array
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        writer.add_tensor(tensor.name, data.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(target)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/gguf_f32.py IN.gguf OUT.gguf")
    write_f32_twin(Path(sys.argv[1]), Path(sys.argv[2]))
