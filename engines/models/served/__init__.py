"""Models on inference servers: the ``openai:URL`` / ``openai:URL#NAME`` model scheme.

:func:`connect` asks the server which models it serves (``/v1/models``) and picks the class
that speaks its dialect by the entry's ``owned_by``: llama.cpp's ``llama-server``
(:mod:`.llamacpp`), SGLang (:mod:`.sglang`), anything else as vLLM / OpenAI-compatible
(:mod:`.openai_compatible`, whose docstring maps every protocol call to its requests). The
package's other modules: the HTTP client with retries and concurrency (:mod:`.client`), the
tokenizer a served model uses here (:mod:`.tokens`) and ``/v1/embeddings`` (:mod:`.embed`).
"""

from __future__ import annotations

from engines.models import SCHEMES, LoadOptions
from engines.models.served.client import EngineClient, EngineError
from engines.models.served.llamacpp import LlamaCppTextModel
from engines.models.served.openai_compatible import ServedTextModel
from engines.models.served.sglang import SGLangTextModel

#: ``owned_by`` in the server's model list -> the class for its dialect (others: ServedTextModel)
DIALECTS: dict[str, type[ServedTextModel]] = {"llamacpp": LlamaCppTextModel, "sglang": SGLangTextModel}


def connect(url: str, model: str | None = None, **client_options) -> ServedTextModel:
    """The model ``model`` (or the server's only one) on the server at ``url``; one-line errors when
    the server cannot be reached, serves several models and none was named, or lacks the one named."""
    client = EngineClient(url, **client_options)
    listed = client.models()
    ids = [m.get("id") for m in listed]
    if model is None:
        if len(ids) != 1:
            raise EngineError(
                f"the server at {client.root_url} serves {len(ids)} models ({', '.join(map(str, ids)) or 'none'}); "
                f"pick one with openai:{client.base_url}#NAME"
            )
        model = ids[0]
    elif model not in ids:
        raise EngineError(
            f"the server at {client.root_url} has no model {model!r}; it serves: {', '.join(map(str, ids))}"
        )
    info = next(m for m in listed if m.get("id") == model)
    return DIALECTS.get(info.get("owned_by"), ServedTextModel).from_server(client, model, info)


def parse_openai_spec(rest: str) -> tuple[str, str | None]:
    """``URL`` or ``URL#NAME`` -> (url, name or None)."""
    url, _, name = rest.partition("#")
    return url.strip(), (name.strip() or None)


def _load_openai(rest: str, options: LoadOptions) -> ServedTextModel:
    return connect(*parse_openai_spec(rest))


SCHEMES.add("openai", _load_openai)
