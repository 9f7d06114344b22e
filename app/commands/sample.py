"""``samplescope sample``: run one sampler on one prompt and print what it found."""

from __future__ import annotations

import argparse
import json
import sys

from app.commands.console import add_json, parse_pairs, quiet_libraries


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="run a sampler on a prompt",
        description="Run a sampler with a model and a reward on one prompt; print the candidates, "
        "their rewards, the pick(s) and the cost.",
    )
    p.add_argument("--model", help="model spec (default: the task set's model, else embedded:smollm2)")
    p.add_argument("--reward", help="reward spec, e.g. sentiment, math, judge, rm:PATH (default: the task's)")
    p.add_argument("--sampler", default="best_of_n", help="sampler name (default: best_of_n)")
    p.add_argument("--n", type=int, help="the sampler's size: n, particles, beams, simulations or rollouts, whichever it has")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE", help="sampler parameter")
    p.add_argument("--budget", action="append", default=[], metavar="COUNTER=CAP", help="cap a cost counter, e.g. generated_tokens=2000")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the prompt text; - reads it from standard input")
    source.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 text file")
    source.add_argument("--task", help="a built-in task, SET:INDEX (see: samplescope list tasks)")
    p.add_argument("--answer", help="reference answer (for verifiable rewards such as math)")
    p.add_argument("--raw", action="store_true", help="do not wrap the prompt in the model's chat template")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--save", action="store_true", help="store the run in the database and print its id")
    p.add_argument("--db", help="database URL (default: SAMPLESCOPE_DB or the user data folder)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.workflows.store import rewards_home
    from engines.errors import ConfigError
    from engines.runner import RunRequest, execute

    params = parse_pairs(args.params, "--set")
    prompt = read_prompt(args)
    if prompt is not None and not prompt.strip():
        raise ConfigError("the prompt is empty")
    request = RunRequest.build(
        size=args.n,
        model=args.model,
        reward=args.reward,
        sampler=args.sampler,
        params=params,
        params_are_strings=True,
        prompt=prompt,
        task_ref=args.task,
        answer=args.answer,
        chat=not args.raw,
        seed=args.seed,
        budget=parse_pairs(args.budget, "--budget"),
        device=args.device,
        dtype=args.dtype,
        rewards_folder=rewards_home(),
    )
    progress = _Progress(enabled=not args.json and sys.stderr.isatty())
    trace = execute(request, on_event=progress)
    progress.close()
    run_id = None
    if args.save:
        from app.workflows.store import open_database, save_request_run

        run_id = save_request_run(open_database(args.db), request, trace)
    result = request.summary(trace)
    if run_id is not None:
        result["run_id"] = run_id
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=float))
    else:
        _print_human(result)
    if result["status"] == "error":  # e.g. a served model went away mid-run; what was done is kept
        message = trace.done.message if trace.done is not None else "the run did not finish"
        print(f"samplescope: error: {message}", file=sys.stderr)
        return 1
    return 0


#: a prompt file or stdin larger than this is refused before it is read whole
MAX_PROMPT_BYTES = 16 * 2**20


def read_prompt(args: argparse.Namespace) -> str | None:
    """The prompt from --prompt TEXT, --prompt - (stdin) or --prompt-file FILE, as checked UTF-8 text."""
    from engines.errors import ConfigError

    if args.prompt_file is not None:
        with open(args.prompt_file, "rb") as handle:
            data = handle.read(MAX_PROMPT_BYTES + 1)
        where = args.prompt_file
    elif args.prompt == "-":
        data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        where = "standard input"
    else:
        return args.prompt  # argv text: RunRequest refuses what is not UTF-8 (undecodable bytes)
    if len(data) > MAX_PROMPT_BYTES:
        raise ConfigError(f"the prompt in {where} is over {MAX_PROMPT_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the prompt in {where} is not UTF-8 (bad byte at offset {exc.start})") from None


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.candidates = 0

    def __call__(self, event) -> None:
        if self.enabled and event.kind == "node" and event.final:
            self.candidates += 1
            print(f"\r{self.candidates} candidates...", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.candidates:
            print("\r", end="", file=sys.stderr)


def _print_human(result: dict) -> None:
    picks = set(result["picks"])
    print(f"model {result['model']}  reward {result['reward']}  sampler {result['sampler']}  seed {result['seed']}")
    print(f"prompt: {result['task']['prompt']}")
    for cand in result["candidates"]:
        mark = "*" if cand["id"] in picks else " "
        reward = "    -   " if cand["reward"] is None else f"{cand['reward']:8.3f}"
        text = "[image]" if cand.get("image") and not cand["text"] else " ".join(cand["text"].split())
        print(f"{mark} {cand['id']:>5} {reward}  {text[:100]}{'...' if len(text) > 100 else ''}")
    cost = result["cost"]
    print(
        f"status {result['status']}; picks {', '.join(result['picks']) or '-'}; "
        f"{cost['generated_tokens']} generated + {cost['prefill_tokens']} prefill tokens, "
        f"{cost['model_calls']} model calls, {cost['reward_calls']} reward calls, "
        + (f"{cost['nfe']} network evaluations, " if cost.get("nfe") else "")
        + (f"{cost['decodes']} decodes, " if cost.get("decodes") else "")
        + (f"{cost['backward_passes']} reward backward passes, " if cost.get("backward_passes") else "")
        + (f"{cost['backward_nfe']} evaluations back-propagated, " if cost.get("backward_nfe") else "")
        + (f"{cost['requests']} requests ({cost.get('cached_prompt_tokens', 0)} cached prompt tokens), "
           if cost.get("requests") else "")
        + f"{cost['wall_seconds']:.2f} s"
    )
    if result.get("metrics"):
        shown = {k: v for k, v in result["metrics"].items() if not isinstance(v, dict | list)}
        if shown:
            print("metrics: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    if result.get("run_id") is not None:
        print(f"saved as run {result['run_id']}")
