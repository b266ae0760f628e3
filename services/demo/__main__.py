"""`python -m adapterfleet.demo PATH`: write the demo base model (a small Llama from a fixed seed, with its tokenizer)
to PATH unless it is already there. The docker-compose `base-model` job and the Kubernetes init container run it;
a real deployment mounts a real model directory instead (deploy/README.md)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adapterfleet.demo",
        description="Write the demo base model (a small Llama from a fixed seed, with its tokenizer) to PATH "
                    "unless it is already there.")
    p.add_argument("path", help="directory to write (save_pretrained layout); kept if it already holds a model")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from adapterfleet.demo.base_model import build_demo_base  # noqa: PLC0415 - torch only when building

    print(f"demo base model in {build_demo_base(args.path, seed=args.seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
