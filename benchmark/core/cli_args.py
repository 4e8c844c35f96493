"""The one command-line convention of every `python -m ...` command of the harness.

    python -m PACKAGE [COMMAND] [NAME ...] key=value ... [--switch ...]

- COMMAND is a word naming what to do (`status`, `report`, `fetch`); NAME is what a few commands act
  on (`python -m benchmark.concepts show cat`).
- Every option that takes a value is `key=value`; a list is comma-separated (`concept=cat,dog`), as in
  Hydra's multirun syntax. Commands that compose run configs hand any other `key=value` to Hydra.
- `--switch` only for options without a value (`--dry-run`, `--wait`, `--rerun-failed`, `--force`).
- `--key value` and `--key=value` are refused with one line naming the `key=value` form (exit 2), as
  is any other word or key the command does not take.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from benchmark.core.registry import did_you_mean

USAGE_EXIT = 2
HELP = ("-h", "--help")


class UsageError(Exception):
    """A command line off the convention; the message is one line that names the fix."""


@dataclass(frozen=True)
class Spec:
    """What one command (or subcommand) takes."""

    keys: tuple[str, ...] = ()          # key=value options of its own
    switches: tuple[str, ...] = ()      # --switch names (without the dashes)
    words: bool = False                 # free words after the command (names it acts on)
    overrides: bool = False             # any other key=value is a Hydra override
    extra_keys: bool = False            # any other key=value is kept among the options (checked by the caller)
    renamed: dict = field(default_factory=dict)  # an old --flag name -> the key that replaced it
    hints: dict = field(default_factory=dict)    # an old --flag name -> the one-line fix, when no key replaced it


@dataclass
class Parsed:
    command: str | None = None
    words: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    switches: set[str] = field(default_factory=set)
    overrides: list[str] = field(default_factory=list)
    help: bool = False

    def get(self, key: str, default=None):
        return self.options.get(key, default)

    def __getitem__(self, key: str) -> str:
        return self.options[key]


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not token[1:2].isdigit() and token != "--"


def parse(argv: list[str] | None, prog: str, specs: dict[str | None, Spec], default: str | None = None) -> Parsed:
    """Split a command line by the convention. `specs` maps each command word to what it takes (the key
    None: a command without subcommands); `default` is the command when none is named."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    out = Parsed(help=any(t in HELP for t in tokens))
    tokens = [t for t in tokens if t not in HELP]
    commands = [c for c in specs if c is not None]
    if commands:
        if tokens and tokens[0] in commands:
            out.command = tokens.pop(0)
        elif tokens and not _is_option(tokens[0]) and "=" not in tokens[0]:
            raise UsageError(f"unknown command `{tokens[0]}`; {prog} takes {' | '.join(commands)}."
                             + did_you_mean(tokens[0], commands))
        elif default is not None or out.help:
            out.command = default
        else:
            raise UsageError(f"name a command: {prog} {' | '.join(commands)} ... (`{prog} --help` explains each).")
    if out.help:
        return out
    spec = specs[out.command]
    see = f"see `{prog}{' ' + out.command if out.command and out.command != default else ''} --help`"
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if _is_option(token):
            name, eq, value = token.lstrip("-").partition("=")
            if not eq and name in spec.switches:
                out.switches.add(name)
                continue
            values = [value] if eq else []
            while not eq and i < len(tokens) and not _is_option(tokens[i]) and "=" not in tokens[i] \
                    and tokens[i] not in commands and not (spec.words and values):
                values.append(tokens[i])
                i += 1
            key = spec.renamed.get(name, name.replace("-", "_"))
            given = token if eq else " ".join([token, *values])
            if name in spec.hints:
                raise UsageError(f"{spec.hints[name]} instead of {given} ({see}).")
            if name in spec.switches:
                raise UsageError(f"--{name} is a switch without a value: write --{name} instead of {given} ({see}).")
            if key in spec.keys or spec.extra_keys or (spec.overrides and values):
                raise UsageError(f"write {key}={','.join(values) or 'VALUE'} instead of {given} "
                                 f"(options take the form key=value; {see}).")
            switches = ", ".join(f"--{s}" for s in spec.switches)
            raise UsageError(f"unknown switch {token}; " + (f"switches: {switches}." if switches else
                                                             "options take the form key=value.")
                             + did_you_mean(name, list(spec.switches)).replace(": ", ": --") + f" ({see}).")
        if "=" in token and not token.startswith("="):
            key = token.split("=", 1)[0]
            if key in spec.keys or (spec.extra_keys and key.lstrip("+~") == key):
                out.options[key] = token.split("=", 1)[1]
            elif key.replace("_", "-") in spec.switches:
                raise UsageError(f"--{key.replace('_', '-')} is a switch: write --{key.replace('_', '-')} instead of "
                                 f"{token} ({see}).")
            elif spec.overrides:
                out.overrides.append(token)
            else:
                raise UsageError(f"unknown key `{key}`; keys: {', '.join(f'{k}=' for k in spec.keys) or 'none'}."
                                 + did_you_mean(key, list(spec.keys)) + f" ({see}).")
            continue
        if spec.words:
            out.words.append(token)
        elif token in spec.keys:
            raise UsageError(f"write {token}=VALUE instead of {token} (options take the form key=value; {see}).")
        else:
            raise UsageError(f"unexpected word `{token}`; options take the form key=value ({see}).")
    return out


def require(args: Parsed, key: str, prog: str, example: str) -> str:
    """A key the command needs, or a one-line UsageError showing it in place."""
    if key not in args.options or not args.options[key]:
        raise UsageError(f"name the {key}: {prog} {example}")
    return args.options[key]


def as_list(value: str | None) -> list[str]:
    return [v for v in (value or "").split(",") if v]


def as_number(key: str, value: str, kind=float):
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{key}={value}: expected {'an integer' if kind is int else 'a number'}.") from None


def fail(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return USAGE_EXIT


def progress(message: str) -> None:
    """A progress line on stderr (stdout keeps the results)."""
    print(message, file=sys.stderr, flush=True)


def setup_logging() -> None:
    """Log lines of the harness ("[dvar] ...") on stderr, once per process."""
    logger = logging.getLogger("dvar")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[dvar] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
