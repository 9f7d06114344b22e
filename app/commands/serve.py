"""``samplescope serve`` (the app) and ``samplescope users add`` (annotator accounts)."""

from __future__ import annotations

import argparse
import getpass
import sys

from app.commands.console import quiet_libraries


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the web app", description="Start the samplescope web app.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=7860, help="port, 1-65535 (default 7860)")
    p.add_argument("--db", help="database URL (default: SAMPLESCOPE_DB or the user data folder)")
    p.add_argument("--auth", metavar="FILE", help="require sign-in with the users in FILE (see: samplescope users add)")
    p.add_argument("--model", help="model to load at start (default: the first engine's model, else embedded:smollm2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--concurrency", type=int, help="sampler runs at once (default 2; 8 with --engine)")
    p.add_argument("--engine", action="append", default=[], metavar="URL",
                   help="an OpenAI-compatible inference server (vLLM, SGLang), e.g. http://127.0.0.1:8000/v1; "
                   "its models join the model pickers as openai:URL#NAME (repeatable)")
    p.add_argument("--no-preload", action="store_true", help="load the model on the first run instead of at start")
    p.set_defaults(func=serve)

    u = sub.add_parser("users", help="manage annotator accounts", description="Manage the accounts that --auth accepts.")
    users = u.add_subparsers(dest="users_command", metavar="ACTION", parser_class=type(p))
    users.required = True
    add = users.add_parser("add", help="add a user", description="Add a user; the password is read from the terminal or stdin.")
    add.add_argument("name")
    add.add_argument("--auth", metavar="FILE", required=True, help="the users file")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.set_defaults(func=add_user)
    ls = users.add_parser("list", help="list users")
    ls.add_argument("--auth", metavar="FILE", required=True)
    ls.set_defaults(func=list_users)


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text[:40]!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 1-65535")
    return port


def build_services(args: argparse.Namespace):
    from app.ui.auth import UserStore
    from app.ui.identity import load_secret
    from app.ui.services import Services
    from app.workflows.store import open_database
    from engines.models.served.client import normalise_url
    from storage.db import data_home

    engines = [normalise_url(url) for url in args.engine]
    if args.model is None:
        args.model = f"openai:{engines[0]}" if engines else "embedded:smollm2"
    if args.concurrency is None:
        args.concurrency = 8 if engines else 2  # served models hold no lock here: the servers batch the runs
    if not 1 <= args.concurrency <= 64:
        raise ValueError("--concurrency must be between 1 and 64")
    users = UserStore(args.auth) if args.auth else None
    if users is not None:
        users.require_users()
    return Services(
        db=open_database(args.db), device=args.device, dtype=args.dtype, users=users,
        concurrency=args.concurrency, default_model=args.model, engines=engines, secret=load_secret(data_home()),
    )


def serve(args: argparse.Namespace) -> int:
    quiet_libraries()
    from app.ui import build_demo, launch_options
    from engines.errors import SamplescopeError

    services = build_services(args)
    for row in services.engine_health():
        state = f"up, serving {', '.join(row['models'])}" if row["ok"] else f"DOWN ({row['error']})"
        print(f"engine {row['url']}: {state}", file=sys.stderr)
    if not args.no_preload:
        print(f"loading {args.model}…", file=sys.stderr)
        try:
            services.preload()
        except SamplescopeError as exc:
            if not args.model.startswith("openai:"):
                raise
            print(f"samplescope: warning: {exc} (runs on it will say so)", file=sys.stderr)
    demo = build_demo(services)
    print(f"samplescope on http://{args.host}:{args.port}  (database: {services.db.safe_url})", file=sys.stderr)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False, quiet=True, **launch_options(services))
    return 0


def add_user(args: argparse.Namespace) -> int:
    from app.ui.auth import UserStore

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise ValueError("the passwords differ")
    UserStore(args.auth).add(args.name, password)
    print(f"added {args.name} to {args.auth}")
    return 0


def list_users(args: argparse.Namespace) -> int:
    from app.ui.auth import UserStore

    for name in UserStore(args.auth).names():
        print(name)
    return 0
