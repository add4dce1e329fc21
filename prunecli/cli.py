"""The ``prunecli`` console script: finds the command word and hands over to that command's
Hydra app, so every command keeps all of Hydra (``-m``, ``--help``, ``--cfg job``, output dirs,
shell completion). Adding a command = one module in ``prunecli/commands`` + one line below +
its primary config in ``conf/``.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> one-line description; the module is prunecli.commands.<command>
COMMANDS: dict[str, str] = {
    "train": "train a model, dense (method=none) or with a pruning method",
    "eval": "evaluate a checkpoint (or model.weights) on a dataset",
    "list": "list the methods, models, datasets and costs prunecli knows",
    "inspect": "show a model's channel groups: sizes, layers, prunable or why not, MACs",
    "slim": "turn a masked training checkpoint into a smaller model file",
    "export": "export a slim model (or a training checkpoint) to ONNX or TorchScript",
    "bench": "measure latency/throughput of a dense model and its slimmed version",
    "lut": "measure a latency table of a model's layers on this device (cost=latency)",
    "report": "one report (table + Pareto, architecture and training-curve plots) of many runs",
}

# Hydra flags whose next argument is a value (not a command word)
_VALUE_FLAGS = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir",
                "-p", "--package", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion",
                "--experimental-rerun"}


def find_command(args: list[str]) -> int | None:
    """Index of the first argument naming a command, skipping Hydra flag values."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in _VALUE_FLAGS:
            skip = True
            continue
        if arg in COMMANDS:
            return i
        if not arg.startswith("-"):
            return None  # an override before any command word
    return None


def usage() -> str:
    lines = ["usage: prunecli COMMAND [hydra options] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<8} {doc}" for name, doc in COMMANDS.items()]
    lines += ["", "Examples:",
              "  prunecli train                      # the embedded demo (CPU, ~2 min)",
              "  prunecli train -m optim.lr=0.1,0.05  # a sweep into one folder",
              "  prunecli train --help                # config groups and options",
              "  prunecli list", "",
              "Shell completion: eval \"$(prunecli -sc install=bash)\""]
    return "\n".join(lines)


def _completion_command() -> str | None:
    """For Hydra's shell completion: the command word in COMP_LINE, which is then removed so
    the command's Hydra app completes its own overrides."""
    line = os.environ.get("COMP_LINE")
    if line is None:
        return None
    words = line.split(" ")
    idx = find_command(words[1:])
    if idx is None:
        return None
    command = words.pop(idx + 1)
    os.environ["COMP_LINE"] = " ".join(words)
    return command


def _wide_console_for_logs() -> None:
    """Rich wraps at 80 columns when output is not a terminal (CI, cluster logs, pipes)."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        import rich

        rich.reconfigure(width=120)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    idx = find_command(args)
    if idx is not None:
        command = args.pop(idx)
    elif "-sc" in args or "--shell-completion" in args:
        command = _completion_command() or "train"
    else:
        help_asked = not args or args[0] in ("-h", "--help", "help")
        print(usage(), file=sys.stdout if help_asked else sys.stderr)
        if not help_asked:
            print(f"\nprunecli: '{args[0]}' is not a command ({', '.join(COMMANDS)})",
                  file=sys.stderr)
        raise SystemExit(0 if help_asked else 2)
    _wide_console_for_logs()
    from prunecli.config.store import register_schemas

    register_schemas()  # the resolvers (and SLURM's ranks): on importing prunecli.commands
    message = misspelt_key(command, args)
    if message is None and command == "train":
        from prunecli.config.validate import method_sweep_overrides
        from prunecli.errors import ConfigError

        try:
            args = method_sweep_overrides(args, _method_schemas())
        except ConfigError as exc:
            message = str(exc)
    if message:
        print(f"prunecli: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    module = importlib.import_module(f"prunecli.commands.{command}")
    sys.argv = [sys.argv[0] if argv is None else "prunecli", *args]
    module.main()


def misspelt_key(command: str, args: list[str]) -> str | None:
    """The one-line error for a misspelt ``key=value`` in ``args``, or None: checked before
    Hydra, whose own message for it is five lines with no suggestion. A user's own config
    folder or primary config (``-cd``, ``-cn``) is left to Hydra."""
    custom = ("-cn", "--config-name", "-cd", "--config-dir", "-cp", "--config-path")
    if any(a in custom or a.startswith(tuple(f"{c}=" for c in custom)) for a in args):
        return None  # its own groups and keys: Hydra checks them
    from prunecli.config.store import PRIMARY_SCHEMAS, config_groups
    from prunecli.config.validate import misspelt_override

    primary = PRIMARY_SCHEMAS.get(command)
    if primary is None:
        return None
    # a Hydra flag's value (``-sc query=bash``) is not an override
    overrides = [a for i, a in enumerate(args) if i == 0 or args[i - 1] not in _VALUE_FLAGS]
    return misspelt_override(primary, overrides, _method_schemas(), config_groups())


def _method_schemas() -> dict[str, type]:
    from prunecli.methods.schemas import METHOD_SCHEMAS

    return {name: node for name, (node, _impl, _doc) in METHOD_SCHEMAS.items()}


if __name__ == "__main__":
    main()
