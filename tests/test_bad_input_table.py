"""Bad input through every command: exit 2, exactly one stderr line `error: ...` naming the key or
file (and the fix), no traceback, and nothing written.

Each case goes through its command's `main(argv)`, what `python -m COMMAND` calls. A fresh
interpreter runs the table case after case (a subprocess per case would cost ~3 s; a case in a warm
interpreter costs a fraction of a second), capturing stdout and stderr at the file descriptors, with
its working directory in the test's folder so that relative defaults (results/, data/) land there;
the folder is compared before and after each case. The one case that waits on the preflight's
offline model load runs alongside in an interpreter of its own. The cases of an unreadable folder
run as root without the capabilities that let root read anything (CAP_DAC_OVERRIDE,
CAP_DAC_READ_SEARCH), so chmod 000 means for them what it means for any user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

# end-to-end runs of several seconds each: `make test-all`, not the fast lane
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_bad_input_table")]  # one worker: fixtures once

# A quick, valid single run and sweep that each case spoils with one input.
BASE = ["model=tiny", "metrics=tiny", "paths.results={tmp}/results"]
RUN = [*BASE, "strategy=dvar", "strategy.max_steps=4", "strategy.window=3"]
SWEEP = ["experiment=smoke", "method=textual_inversion", "strategy=dvar", "paths.results={tmp}/results"]
MAX = "10000000"

# (command, arguments, a fragment of the error line). {tmp}: the test's folder (FILES below are in it).
CASES = [
    # --- benchmark.run: the inputs -----------------------------------------------------------
    ("benchmark.run", [*RUN, "device=tpu"], "device must be auto, cpu, cuda, cuda:N or mps (got 'tpu')"),
    ("benchmark.run", [*RUN, "device=cuda:99"], "device=cuda:99 but"),
    ("benchmark.run", [*RUN, "sampling.guidance=abc"], "sampling.guidance must be a number in [1, 100] (got 'abc')"),
    ("benchmark.run", [*RUN, "method.max_grad_norm=abc"], "method.max_grad_norm must be a number in (0, 1000000]"),
    ("benchmark.run", [*RUN, "method.max_grad_norm=-1"], "method.max_grad_norm must be a number in (0, 1000000] "
                                                         "(got -1); or null: no clipping"),
    ("benchmark.run", [*RUN, "method.max_grad_norm=0"], "method.max_grad_norm must be a number in (0, 1000000]"),
    ("benchmark.run", [*RUN, "ldet.timestep_range=abc"], "ldet.timestep_range must be [lo, hi]"),
    ("benchmark.run", [*RUN, "ldet.timestep_range=[0,1001]"], "ldet.timestep_range must be [lo, hi]"),
    ("benchmark.run", [*RUN, "strategy.max_steps=99999999999999999999"],
     f"strategy.max_steps must be an integer from 1 to {MAX} (got 99999999999999999999)"),
    ("benchmark.run", [*RUN, "strategy.window=5", "ldet.every=10"],
     "strategy.window=5 holds one L_det value at ldet.every=10"),
    ("benchmark.run", [*RUN, "strategy.max_steps=15", "strategy.window=15", "ldet.every=10"],
     "DVAR decides first at step 20, beyond strategy.max_steps=15"),
    ("benchmark.run", [*RUN, "model.pretrained=/nonexistent"], "model.pretrained=/nonexistent: folder does not exist"),
    ("benchmark.run", [*RUN, "paths.results=/proc/x"], "paths.results=/proc/x: not writable"),
    ("benchmark.run", [*RUN, "paths.results={tmp}/file"], "paths.results={tmp}/file: not writable"),
    ("benchmark.run", [*RUN, "paths.results={tmp}/file/below"], "paths.results={tmp}/file/below: not writable"),
    # --- benchmark.run: cases of tests before this table ---------------------------------------------
    ("benchmark.run", [*RUN, "method.learning_rate=abc"], "method.learning_rate must be a number in (0, 1] (got 'abc')"),
    ("benchmark.run", [*RUN, "strategy.threshold=abc"], "strategy.threshold must be a number in (0, 1) (got 'abc')"),
    ("benchmark.run", [*RUN, "strategy.window=abc"], f"strategy.window must be an integer from 2 to {MAX} (got 'abc')"),
    ("benchmark.run", [*RUN, "strategy.window=1"], f"strategy.window must be an integer from 2 to {MAX} (got 1)"),
    ("benchmark.run", [*RUN, "ldet.every=0"], f"ldet.every must be an integer from 1 to {MAX} (got 0)"),
    ("benchmark.run", [*RUN, "+strategy.windw=3"], "unknown config key `strategy.windw`"),
    ("benchmark.run", [*RUN, "strategy.window=100000"], "strategy.window=100000 exceeds strategy.max_steps=4: DVAR "
                                                        "could never stop"),
    ("benchmark.run", [*RUN, "ldet.log=sometimes"], "ldet.log must be watched, always or a positive multiple of "
                                                    "ldet.every=1 (got 'sometimes')"),
    ("benchmark.run", [*RUN, "deterministic=maybe"], "deterministic must be true or false (got 'maybe')"),
    ("benchmark.run", [*RUN, "mixed_precision=fp8"], "mixed_precision must be one of auto, no, fp16, bf16 (got 'fp8')"),
    ("benchmark.run", [*RUN, "--seed=3"], "write seed=3 instead of --seed=3"),
    ("benchmark.run", [*RUN, "--experiment", "X"], "write experiment=X instead of --experiment X"),
    ("benchmark.run", [*RUN, "force=true"], "--force is a switch: write --force instead of force=true"),
    ("benchmark.run", [*RUN, "model=sd16"], "Unknown model 'sd16' (config key `model`). Did you mean: sd15, sd14?"),
    ("benchmark.run", [*RUN, "concept=duck_tyo"], "Did you mean: duck_toy"),
    ("benchmark.run", [*BASE, "strategy=few_iters"], "strategy.steps"),
    ("benchmark.run", [*RUN, "experiment=a/b"], "experiment must be a name"),
    # --- benchmark.run: values as Hydra reads them (every key: test_every_numeric_key_has_a_type_and_a_range)
    *[("benchmark.run", [*RUN, f"{key}={value}"], f"{key} must be {what}") for key, value, what in [
        ("seed", "-1", "an integer from 0 to 2147483647"),
        ("train_batch_size", "0", "an integer from 1 to 1024"),
        ("checkpoint_every", "-5", f"an integer from 0 to {MAX}"),
        ("records.flush_every", "0", f"an integer from 1 to {MAX}"),
        ("logger", "foo", "one of none, tensorboard, wandb"),
        ("progress", "2", "true or false"),
        ("ldet.accumulation", "1.5", "an integer from 1 to 1000"),
        ("ldet.fixed.noise", "sometimes", "true or false"),
        ("sampling.guidance", "0.5", "a number in [1, 100]"),
        ("sampling.guidance", "nan", "a number in [1, 100]"),
        ("sampling.n_val_prompts", "0", "an integer from 1 to 1000"),
        ("sampling.save_images", "some", "one of none, final, all"),
        ("model.sample_steps", "0", "an integer from 1 to 1000"),
        ("model.resolution", "60", "a multiple of 8 from 16 to 4096"),
        ("metrics.lpips.net", "resnet", "one of alex, vgg, squeeze"),
        ("method.learning_rate", "inf", "a number in (0, 1]"),
        ("method.adam.beta1", "1", "a number in [0, 1)"),
        ("method.guidance", "abc", "a number in [1, 100]"),
        ("method.captions", "random", "one of templates, instance"),
        ("method.protocol.dvar.threshold", "1", "a number in (0, 1)"),
        ("method.protocol.few_iters.max", "2.5", f"an integer from 1 to {MAX}"),
        ("strategy.threshold", "1.0", "a number in (0, 1)"),
    ]],
    ("benchmark.run", [*RUN, "method=custom_diffusion", "method.prior.num_class_images=0"],
     "method.prior.num_class_images must be an integer from 1 to 100000 (got 0)"),
    ("benchmark.run", [*RUN, "method=custom_diffusion", "method.prior.weight=-1"],
     "method.prior.weight must be a number in [0, 100]"),
    ("benchmark.run", [*RUN, "method=dreambooth_lora", "method.lora.rank=0"], "method.lora.rank must be an integer"),
    ("benchmark.run", [*RUN, "method=dreambooth_lora", "method.lora.alpha=0"], "method.lora.alpha must be a number"),
    ("benchmark.run", [*BASE, "strategy=clip_s", "strategy.patience=-1"], "strategy.patience must be an integer from 0"),
    ("benchmark.run", [*BASE, "strategy=clip_s", "strategy.eps=3"], "strategy.eps must be a number in [0, 1]"),
    ("benchmark.run", [*BASE, "strategy=baseline", "strategy.eval_every=0"], "strategy.eval_every must be an integer"),
    ("benchmark.run", [*BASE, "strategy=few_iters", "strategy.steps=-2"], "strategy.steps must be an integer from 1"),
    # --- benchmark.sweep: run, --dry-run, status, preflight ------------------------------------------
    *[("benchmark.sweep", [*command, *SWEEP[1:], *args], fragment) for command in (["run"], ["run", "--dry-run"],
                                                                                  ["status"], ["preflight"])
      for args, fragment in [
          (["experiment={tmp}/syntax.yaml"], "{tmp}/syntax.yaml: not an experiment: invalid YAML at line 2"),
          (["experiment={tmp}/list.yaml"], "{tmp}/list.yaml: holds a list, not an experiment"),
          (["experiment={tmp}/scalar.yaml"], "grid.method must be a list, e.g. method: [NAME] "
                                             "(got 'textual_inversion')"),
          (["experiment={tmp}/variants.yaml"], "variants[0] must be a list of key=value overrides"),
          (["experiment=smok"], "Unknown experiment 'smok'"),
          (["experiment=smoke", "profile={tmp}/syntax.yaml"], "{tmp}/syntax.yaml: not a launcher profile: invalid YAML"),
          (["experiment=smoke", "profile={tmp}/list.yaml"], "profile={tmp}/list.yaml: holds a list, not launcher keys"),
          (["experiment=smoke", "profile={tmp}/typo.yaml"], "unknown launcher keys timout_min. Did you mean: timeout_min"),
          (["experiment=smoke", "profile={tmp}/none.yaml"], "profile={tmp}/none.yaml: no such file"),
          (["experiment=smoke", "launcher.workers=abc"], "launcher.workers must be an integer from 1 to 256 (got 'abc')"),
          (["experiment=smoke", "launcher.workers=-3"], "launcher.workers must be an integer from 1 to 256 (got -3)"),
          (["experiment=smoke", "launcher.workers=0"], "launcher.workers must be an integer from 1 to 256 (got 0)"),
          (["experiment=smoke", "paths.results={tmp}/file"], "paths.results={tmp}/file: a file, not a folder"),
          (["experiment=smoke", "seed=abc"], "seed=abc: expected an integer"),
          (["experiment=smoke", "model=sd16"], "Unknown model 'sd16'"),
          (["experiment=smoke", "method.max_grad_norm=-1"], "method.max_grad_norm must be a number in (0, 1000000]"),
          (["experiment=smoke", "strategy.max_steps=99999999999999999999"], "strategy.max_steps must be an integer"),
          (["experiment=smoke", "strategy.window=5", "ldet.every=10"], "holds one L_det value at ldet.every=10"),
          (["experiment=smoke", "device=tpu"], "device must be auto, cpu, cuda, cuda:N or mps (got 'tpu')"),
          (["experiment=smoke", "model.pretrained=/nonexistent"], "model.pretrained=/nonexistent: folder does not exist"),
          (["experiment=smoke", "--experiment", "smoke"], "write experiment=smoke instead of --experiment smoke"),
      ]],
    *[("benchmark.sweep", [*command, *SWEEP, f"launcher.timing={{tmp}}/{name}"], f"{{tmp}}/{name}: not a timing profile")
      for command in (["run"], ["run", "--dry-run"], ["preflight"]) for name in ("syntax.yaml", "list.yaml")],
    *[("benchmark.sweep", [*SWEEP, "launcher=slurm", f"launcher.{key}={value}"], f"launcher.{key} must be")
      for key, value in [("share_trajectories", "2"), ("timeout_min", "-1"), ("mem_gb", "0"), ("array_parallelism", "0"),
                         ("signal_delay_s", "-1"), ("max_num_timeout", "abc"), ("gpus_per_node", "-1"),
                         ("cpus_per_task", "0")]],
    ("benchmark.sweep", ["statu", *SWEEP], "unknown command `statu`"),
    ("benchmark.sweep", [*SWEEP, "--dry_run"], "Did you mean: --dry-run?"),
    ("benchmark.sweep", [*SWEEP, "records.flush_every=0"], f"records.flush_every must be an integer from 1 to {MAX} (got 0)"),
    ("benchmark.sweep", [*SWEEP, "logger=tensorbord"], "logger must be one of none, tensorboard, wandb (got 'tensorbord')"),
    ("benchmark.sweep", [*SWEEP, "--concepts", "cat", "dog"], "write concept=cat,dog instead of --concepts cat dog"),
    ("benchmark.sweep", [*SWEEP, "--profile", "slurm/a100.yaml"], "write profile=slurm/a100.yaml instead of"),
    # --- benchmark.preflight (the sweep's preflight, its own command) --------------------------------
    ("benchmark.preflight", [*SWEEP, "experiment={tmp}/scalar.yaml"], "grid.method must be a list"),
    ("benchmark.preflight", [*SWEEP, "profile={tmp}/list.yaml"], "holds a list, not launcher keys"),
    ("benchmark.preflight", [*SWEEP, "sampling.guidance=abc"], "sampling.guidance must be a number in [1, 100]"),
    ("benchmark.preflight", ["--experiment", "smoke"], "write experiment=smoke instead of --experiment smoke"),
    # --- benchmark.weights -------------------------------------------------------------------------
    *[("benchmark.weights", [command, *args], fragment) for command in ("list", "check", "fetch") for args, fragment in [
        (["experiment={tmp}/syntax.yaml"], "{tmp}/syntax.yaml: not an experiment: invalid YAML"),
        (["experiment={tmp}/scalar.yaml"], "grid.method must be a list"),
        (["method.max_grad_norm=abc"], "method.max_grad_norm must be a number"),
        (["model=sd15", "model.pretrained=/nonexistent"], "model.pretrained=/nonexistent: folder does not exist"),
        (["model=sd16"], "Unknown model 'sd16'"),
        (["--experiment", "table1"], "write experiment=table1 instead of --experiment table1"),
    ]],
    # --- benchmark.concepts -------------------------------------------------------------------------
    ("benchmark.concepts", ["show", "cat_stat"], "Unknown concept 'cat_stat'"),
    ("benchmark.concepts", ["show"], "name one concept"),
    ("benchmark.concepts", ["list", "source=flickr"], "source=flickr: choose one of"),
    ("benchmark.concepts", ["validate", "duck_toy", "data={tmp}/file"], "data={tmp}/file: a file, not a folder"),
    ("benchmark.concepts", ["list", "data={tmp}/file"], "data={tmp}/file: a file, not a folder"),
    ("benchmark.concepts", ["fetch", "duck_toy", "data=/proc/x", "--quiet"], "data=/proc/x: cannot be written"),
    ("benchmark.concepts", ["fetch", "duck_toy", "data={tmp}/file/below", "--quiet"], "data={tmp}/file/below: cannot be"),
    ("benchmark.concepts", ["fetch", "duck_toy", "from={tmp}/nonexistent", "data={tmp}/data", "--quiet"],
     "from={tmp}/nonexistent: no such folder"),
    ("benchmark.concepts", ["validate", "duck_toy", "--data", "/tmp/d"], "write data=/tmp/d instead of --data /tmp/d"),
    ("benchmark.concepts", ["fetch", "--from=/m"], "write from=/m instead of --from=/m"),
    # --- analysis ----------------------------------------------------------------------------------
    *[("analysis", [command, "experiment=smoke", *args], fragment)
      for command in ("report", "tables", "ablation", "strided", "replay") for args, fragment in [
          (["results={tmp}/file"], "results={tmp}/file: a file, not a folder"),
          (["results={tmp}", "out={tmp}/file"], "out={tmp}/file: a file, not a folder"),
          (["results={tmp}", "out={tmp}/file/below"], "out={tmp}/file/below: cannot be written"),
          (["results={tmp}", "out=/proc/x"], "out=/proc/x: cannot be written"),
          (["results={tmp}/file/below"], "results={tmp}/file/below: {tmp}/file is a file, not a folder"),
      ]],
    *[("analysis", ["replay", "experiment=smoke", "results={tmp}", *args], fragment) for args, fragment in [
        (["criterion=dvar", "window=300", "threshold=0.1", "tuning_fraction=5"],
         "tuning_fraction must be a number in (0, 1] (got 5.0)"),
        (["criterion=dvar", "window=300", "threshold=0.1", "tuning_fraction=0"], "tuning_fraction must be a number"),
        (["criterion=dvar", "window=300", "threshold=0.1", "target=abc"], "target=abc: expected a number"),
        (["criterion=dvar", "window=300", "threshold=0.1", "target=1.5"], "target must be a number in (0, 1]"),
        (["criterion=dvar", "window=300", "threshold=0.1", "seed=-1"], "seed must be an integer from 0"),
        (["criterion=dvar", "window=1,300", "threshold=0.1"], f"window must be an integer from 2 to {MAX} (got 1)"),
        (["criterion=dvar", "window=300", "threshold=0.1,1.5"], "threshold must be a number in (0, 1) (got 1.5)"),
        (["criterion=dvar", "window=5", "threshold=0.1", "every=10"], "window=5 holds one L_det value at every=10"),
        (["criterion=dvar", "window=300"], "replay criterion=dvar needs threshold=V1,V2 too"),
        (["criterion=clip_s", "patience=-1", "eps=0.1"], "patience must be an integer from 0"),
        (["criterion=clip_s", "patience=3", "eps=0.1", "every=0"], "every must be an integer from 1"),
        (["criterion=hall", "window=10", "threshold=0"], "threshold must be a number in (0, 1000000]"),
        (["criterion=fixed", "steps=0"], "steps must be an integer from 1"),
        (["criterion=dvr", "window=3"], "criterion=dvr: not a criterion"),
        (["criterion=dvar", "windw=3"], "unknown key `windw`: dvar takes window"),
        (["criterion=dvar", "--grid", "window=1,2"], "give each hyperparameter as its own key"),
    ]],
    *[("analysis", ["strided", "experiment=smoke", "results={tmp}", *args], fragment) for args, fragment in [
        (["every=0"], "every must be an integer from 1"),
        (["every=2,abc"], "every=abc: expected an integer"),
        (["window=0"], "window must be an integer from 2"),
        (["window=8", "every=10"], "window=8 holds one L_det value at every=10"),
        (["threshold=2"], "threshold must be a number in (0, 1) (got 2.0)"),
    ]],
    ("analysis", ["tables", "experimnt=smoke"], "unknown key `experimnt`; keys: experiment=, results=, out=."),
    ("analysis", ["experiment=smoke"], "name a command: python -m analysis report | tables"),
    ("analysis", ["report"], "name the experiment: python -m analysis report experiment=NAME"),
    ("analysis", ["report", "--experiment", "smoke"], "write experiment=smoke instead of --experiment smoke"),
]

# A real launch of valid configs into a results folder nothing can be written to: the preflight's check
# refuses it, after every other check, the offline load of every model included (a subprocess of ~15 s
# here, so this one case runs alongside the others; `benchmark.preflight` is the same check).
PREFLIGHT_CASES = [
    ("benchmark.sweep", [*SWEEP, "paths.results=/proc/x"], "paths.results=/proc/x: not writable"),
]

# A folder this user cannot read: as root, these run without the capabilities that bypass permissions.
LOCKED_CASES = [
    ("benchmark.run", [*RUN, "paths.results={tmp}/locked"], "paths.results={tmp}/locked: not writable (Permission denied)"),
    ("benchmark.sweep", ["status", *SWEEP, "paths.results={tmp}/locked"], "paths.results={tmp}/locked: this user cannot read it"),
    ("benchmark.sweep", [*SWEEP, "--dry-run", "paths.results={tmp}/locked"], "paths.results={tmp}/locked: this user cannot"),
    ("benchmark.preflight", [*SWEEP, "paths.results={tmp}/locked"], "paths.results={tmp}/locked: this user cannot read it"),
    ("benchmark.sweep", ["status", *SWEEP, "paths.results={tmp}/locked/below"], "paths.results={tmp}/locked/below: a file"),
    *[("analysis", [command, "experiment=smoke", "results={tmp}/locked"], "results={tmp}/locked: this user cannot read it")
      for command in ("report", "tables", "ablation", "strided", "replay")],
    ("analysis", ["report", "experiment=smoke", "results={tmp}", "out={tmp}/locked/out"],
     "out={tmp}/locked/out: cannot be written"),
]

FILES = {
    "file": "not a folder\n",
    "syntax.yaml": "grid: [unclosed\n",
    "list.yaml": "- a\n- b\n",
    "scalar.yaml": "overrides: [model=tiny, metrics=tiny]\n"
                   "grid: {method: textual_inversion, strategy: dvar, concept: sample_duck_toy, seed: 1}\n",
    "variants.yaml": "overrides: [model=tiny, metrics=tiny]\nvariants: [ldet.batch_size=1]\n"
                     "grid: {method: [textual_inversion], strategy: [dvar], concept: [sample_duck_toy], seed: [1]}\n",
    "typo.yaml": "timout_min: 5\n",
}

MAINS = {  # command -> (module, leading arguments): what `python -m COMMAND ...` calls
    "benchmark.run": ("benchmark.run", []),
    "benchmark.sweep": ("benchmark.sweep.cli", []),
    "benchmark.preflight": ("benchmark.sweep.cli", ["preflight"]),
    "benchmark.weights": ("benchmark.weights.__main__", []),
    "benchmark.concepts": ("benchmark.concepts.cli", []),
    "analysis": ("analysis.cli", []),
}


# --- the batch, run in a fresh interpreter per command ------------------------------------------
def snapshot(folder: str) -> dict:
    """Every entry under `folder` with its size and modification time (a file made and removed again
    changes its folder's time)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
        try:
            out[os.path.relpath(root, folder)] = ("dir", os.lstat(root).st_mtime_ns)
        except OSError:
            pass
    return out


def run_case(command: str, argv: list[str], folder: str) -> dict:
    """One case through the command's main(argv), stdout and stderr captured at the descriptors."""
    import importlib
    import tempfile
    import traceback
    import warnings

    module, lead = MAINS[command]
    main = importlib.import_module(module).main
    before = snapshot(folder)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            with warnings.catch_warnings():  # each warning shows again, as in a process of its own
                warnings.simplefilter("default")
                code = main([*lead, *argv])
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # noqa: BLE001 - a traceback is what the case looks for
            traceback.print_exc()
            code = "exception"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    after = snapshot(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return {"code": code, "stderr": stderr, "changed": changed, "seconds": round(time.perf_counter() - t0, 2)}


def batch(cases_file: str, answers_file: str) -> None:
    """The entry point of the subprocess: every case of cases_file, answers to answers_file."""
    cases = json.loads(Path(cases_file).read_text())
    answers = [run_case(c["command"], c["argv"], os.getcwd()) for c in cases]
    Path(answers_file).write_text(json.dumps(answers))


def drop_read_anything() -> None:
    """As root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before exec, so
    the process is held to permission bits like any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def start_batch(name: str, cases: list[tuple], tmp: Path, scratch: Path, locked: bool = False):
    """A subprocess running `cases` in `tmp`; finish_batch waits for its answers."""
    cases_file, answers_file = scratch / f"{name}.cases.json", scratch / f"{name}.answers.json"
    cases_file.write_text(json.dumps([{"command": c, "argv": [a.format(tmp=tmp) for a in argv]}
                                      for c, argv, _ in cases]))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(scratch / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from tests.test_bad_input_table import batch; "
                                 "batch(sys.argv[1], sys.argv[2])", str(cases_file), str(answers_file)],
                                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=drop_read_anything if locked and os.geteuid() == 0 else None)
    return cases, tmp, proc, answers_file, scratch / f"{name}.log"


def finish_batch(cases, tmp: Path, proc, answers_file: Path, log: Path) -> dict:
    proc.wait(timeout=600)
    assert proc.returncode == 0 and answers_file.exists(), log.read_text()[-3000:]
    return {case_id(c): {**a, "tmp": str(tmp)} for c, a in zip(cases, json.loads(answers_file.read_text()))}


def folder_with_files(tmp_path_factory, name: str) -> Path:
    tmp = tmp_path_factory.mktemp(name)
    for file, text in FILES.items():
        (tmp / file).write_text(text)
    (tmp / "locked").mkdir()
    return tmp


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict:
    tmp = folder_with_files(tmp_path_factory, "bad_input")
    scratch = tmp_path_factory.mktemp("bad_input_batches")  # outside the watched folders
    # the preflight's cases wait on a subprocess of their own most of the time: alongside, in their own folder
    slow = start_batch("preflight", PREFLIGHT_CASES, folder_with_files(tmp_path_factory, "bad_input_preflight"), scratch)
    out = finish_batch(*start_batch("cases", CASES, tmp, scratch))
    out.update(finish_batch(*slow))
    (tmp / "locked").chmod(0)
    try:
        out.update(finish_batch(*start_batch("locked", LOCKED_CASES, tmp, scratch, locked=True)))
    except subprocess.SubprocessError as err:  # root here may not drop capabilities (no CAP_SETPCAP)
        out["locked cases skipped"] = f"cannot make root subject to permissions here ({err})"
    finally:
        (tmp / "locked").chmod(0o755)
    return out


ALL = [*CASES, *PREFLIGHT_CASES, *LOCKED_CASES]


def case_id(case: tuple) -> str:
    command, argv, _ = case
    return " ".join([command, *(a for a in argv if a not in RUN and a not in SWEEP)])


def test_the_table_names_each_case_once():
    ids = [case_id(c) for c in ALL]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case", ALL, ids=case_id)
def test_bad_input_is_one_line_exit_2_and_nothing_written(answers, case):
    if case in LOCKED_CASES and "locked cases skipped" in answers:
        pytest.skip(answers["locked cases skipped"])
    answer = answers[case_id(case)]
    fragment = case[2].format(tmp=answer["tmp"])
    lines = [line for line in answer["stderr"].splitlines() if line.strip()]
    assert "Traceback" not in answer["stderr"], answer["stderr"][-3000:]
    assert answer["code"] == 2, answer
    assert len(lines) == 1 and lines[0].startswith("error: "), answer["stderr"][-3000:]
    assert fragment in lines[0], lines[0]
    assert not answer["changed"], f"written although refused: {answer['changed'][:5]}"


# --- every numeric key of conf/ has a type and a range ---------------------------------------------
# The component configs of built models and of the metric models are the libraries' own constructor
# arguments, passed on as they are (benchmark.protocol.config.KEYS says so).
LIBRARY_CONFIGS = ("model.build.text_encoder.", "model.build.vae.", "model.build.unet.", "metrics.clip.config.",
                   "metrics.dino.kwargs.")


def leaves(cfg: dict, prefix: str = ""):
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def with_value(cfg: dict, dotted: str, value) -> dict:
    import copy

    out = copy.deepcopy(cfg)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[leaf] = value
    return out


def test_every_numeric_key_has_a_type_and_a_range():
    """Every key of every option of conf/ that holds a number or a switch (or null where another option
    holds one) refuses a word, a negative number and 10**12, naming itself: config.validate for the run
    keys (method, strategy, model, metrics, ldet, sampling), the sweep's check for the launcher's."""
    from benchmark.core.errors import ConfigError
    from benchmark.protocol.config import GROUPS, compose, group_options, validate
    from benchmark.sweep.plan import LAUNCHER_KEYS, check_launcher

    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, str)  # noqa: E731 (bool included)
    checked = set()
    for group in GROUPS:
        for option in group_options(group):
            required = {"few_iters": ["strategy.steps=5"], "custom": ["strategy.criterion=examples/plateau_criterion.py:Plateau"]}
            cfg = compose([f"{group}={option}", *required.get(option, [])])
            keys = [k for k, v in leaves(cfg) if (numeric(v) or k in ("method.max_grad_norm", "sampling.n_val_prompts"))
                    and not k.startswith(LIBRARY_CONFIGS) and k not in checked]
            keys += [f"launcher.{k}" for k in LAUNCHER_KEYS if k in cfg["launcher"] and f"launcher.{k}" not in checked]
            for key in dict.fromkeys(keys):
                checked.add(key)
                for bad in ("abc", -1, 10**12):
                    with pytest.raises(ConfigError) as err:
                        if key.startswith("launcher."):
                            check_launcher(with_value(cfg, key, bad)["launcher"])
                        else:
                            validate(with_value(cfg, key, bad))
                    assert str(err.value).startswith(key), (key, bad, str(err.value))
    assert {"seed", "ldet.every", "method.max_grad_norm", "strategy.window", "method.protocol.dvar.window",
            "launcher.workers", "launcher.mem_gb", "metrics.seed", "model.resolution"} <= checked
