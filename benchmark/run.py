"""`python -m benchmark.run [key=value ...] [--force] [--cfg]`: one run from the Hydra config in conf/
(`--help` lists the config groups, the main keys and examples)."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import yaml

from benchmark.core.cli_args import Spec, UsageError, fail, setup_logging
from benchmark.core.cli_args import parse as parse_args
from benchmark.core.errors import ConfigError
from benchmark.protocol.config import (
    CONF_DIR,
    GROUPS,
    check_groups,
    compose,
    default_option,
    group_options,
)
from benchmark.store.runs import Busy

PROG = "python -m benchmark.run"
SPECS = {None: Spec(switches=("force", "cfg"), overrides=True)}

# The keys --help shows: (key, shown as, comment when conf/ has none on that line).
MAIN_KEYS = (
    ("concept", None, None),
    ("seed", None, None),
    ("experiment", None, None),
    ("strategy.max_steps", "N", "step cap of every strategy (default: method.max_train_steps)"),
    ("strategy.window", "N", "DVAR: the window N, in steps (paper values: method.protocol.dvar)"),
    ("strategy.threshold", "ALPHA", "DVAR: stop when var(last N) / var(all) < alpha"),
    ("strategy.eval_every", "K", "Baseline, CLIP-s: a CLIP evaluation every K updates"),
    ("strategy.patience", "P", "CLIP-s: stop on the (P+1)-th check without an improvement > eps"),
    ("strategy.steps", "N", "Few-iters: the number of updates (strategy=few_iters needs it)"),
    ("method.max_train_steps", "N", None),
    ("method.learning_rate", "LR", "the effective learning rate (the paper's per method in conf/method/)"),
    ("ldet.every", None, None),
    ("ldet.log", None, None),
    ("ldet.batch_size", None, None),
    ("ldet.accumulation", None, None),
    ("ldet.fixed.SOURCE", "true", None),
    ("ldet.intervals", None, None),
    ("sampling.n_val_prompts", None, None),
    ("device", None, None),
    ("mixed_precision", None, None),
    ("deterministic", None, None),
    ("checkpoint_every", None, None),
    ("paths.results", None, None),
    ("paths.data", "DIR", None),
    ("paths.cache", "DIR", None),
)


# --- --help ------------------------------------------------------------------------------------
def yaml_lines(path: Path) -> dict[str, tuple[str, str]]:
    """dotted key -> (value as written, inline comment) of a config file (mappings only)."""
    out, stack = {}, []
    for line in path.read_text().splitlines():
        hash_ = re.search(r"(^|\s)#", line)
        body, comment = (line[:hash_.start()], line[hash_.end():].strip()) if hash_ else (line, "")
        m = re.match(r"^(\s*)([A-Za-z_]\w*):\s*(.*)$", body)
        if not m:
            continue
        indent, key, value = len(m[1]), m[2], m[3].strip()
        stack = [(i, k) for i, k in stack if i < indent]
        dotted = ".".join([k for _, k in stack] + [key])
        out[dotted] = (value, comment)
        stack.append((indent, key))
    return out


def header_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return re.split(r"(?<=\.)\s", " ".join(lines))[0].rstrip(".")


def key_line(key: str, shown: str | None, fallback: str | None) -> str:
    group, _, rest = key.partition(".")
    sources = [CONF_DIR / "run.yaml"]
    if group in GROUPS:
        sources = [CONF_DIR / group / f"{default_option(group)}.yaml"]
        key = rest
    lines = {}
    for path in sources:
        lines.update(yaml_lines(path))
    value, comment = lines.get(key.replace(".SOURCE", ""), ("", ""))
    if key.endswith(".SOURCE"):
        children = [k.rsplit(".", 1)[1] for k in lines if k.startswith(key.replace("SOURCE", ""))]
        comment = f"false: redrawn per evaluation ({'|'.join(children)})"
    if shown is None:
        shown = value if value and "${" not in value else "VALUE"
    text = fallback or comment
    name = f"{group}.{key}" if group in GROUPS else key
    lines = textwrap.wrap(text, 68)[:2] or [""]
    return "\n".join([f"  {name + '=' + shown:<30}{lines[0]}", *(f"{'':<32}{ln}" for ln in lines[1:])])


def help_text() -> str:
    groups = []
    for group in GROUPS:
        for i, option in enumerate(group_options(group)):
            mark = "*" if i == 0 else " "
            about = header_comment(CONF_DIR / group / f"{option}.yaml")
            groups.append(f"  {group + '=' + option + mark:<30}{textwrap.shorten(about, 68, placeholder=' …')}")
    keys = [key_line(*k) for k in MAIN_KEYS]
    return "\n".join([
        f"usage: {PROG} [key=value ...] [--force] [--cfg]",
        "",
        "One personalization run (one concept x method x strategy x seed) with L_det after every update;",
        "records go to Parquet under paths.results. The same config launched again skips a completed run",
        "and resumes an unfinished one from its last checkpoint. Options are key=value (Hydra overrides).",
        "",
        "config groups (one option each; * = default; launcher= is read by sweeps only):",
        *groups,
        "",
        "main keys (any key of the composed config can be set; --cfg prints them all):",
        *keys,
        "",
        "switches:",
        f"  {'--force':<30}run a completed run again (its records move to results/replaced/)",
        f"  {'--cfg':<30}print the composed config and exit",
        "",
        "examples:",
        f"  {PROG}                                   # TI + DVAR, bundled concept, tiny model",
        f"  {PROG} method=custom_diffusion strategy=clip_s concept=cat model=sd15 metrics=real",
        f"  {PROG} strategy.window=200 strategy.threshold=0.2 seed=1",
        f"  {PROG} strategy=few_iters strategy.steps=300 --cfg",
        "",
        "sweeps (many runs, local or Slurm): python -m benchmark.sweep --help",
        "",
    ])


# --- the command ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--cfg" in argv and argv.index("--cfg") + 1 < len(argv) and argv[argv.index("--cfg") + 1] in ("job", "all"):
        del argv[argv.index("--cfg") + 1]  # Hydra's own spelling, `--cfg job`
    try:
        args = parse_args(argv, PROG, SPECS)
    except UsageError as err:
        return fail(err)
    if args.help:
        print(help_text(), end="")
        return 0

    setup_logging()
    try:
        check_groups(args.overrides)
        cfg = compose(args.overrides)
        if "cfg" in args.switches:
            print(yaml.safe_dump(cfg, sort_keys=False), end="")
            return 0
        from benchmark.engine.train import (
            run,  # torch: --help and --cfg answer without it
        )

        row = run(cfg, force="force" in args.switches)
    except ConfigError as err:
        return fail(err)
    except Busy as err:
        print(f"busy: {err}", file=sys.stderr)
        return 3
    metrics = " ".join(f"{k} {row[k]:.4f}" for k in ("train_clip_img", "val_clip_img", "val_clip_txt", "dino", "div")
                       if row.get(k) is not None)
    print(f"run {row['run_id']}: {row['stop_reason']} after {row['iterations']} steps, reported step "
          f"{row['reported_step']}; {metrics}; {row['total_s'] / 60:.2f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
