"""Table cells with bootstrap intervals and the between-seed spread, and the claims table (each
strategy against Baseline, paired by concept), from records with answers known by hand."""

from pathlib import Path

import pytest

from analysis.load import completed_runs
from analysis.tables import claim, claims, claims_markdown, table1, to_markdown
from benchmark.store import records

CONCEPT_QUALITY = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.9}  # Baseline's train CLIP img per concept


def write_runs(results: Path) -> None:
    """Textual Inversion, four concepts x two seeds. Baseline: 400 updates, train CLIP img v ∓ 0.02 per
    seed (v per concept above). DVAR: 80 / 120 updates (100 on average) except concept d (400, like
    Baseline), 90 % of Baseline's train CLIP img seed by seed, val CLIP img 0.02 lower."""
    for concept, v in CONCEPT_QUALITY.items():
        for seed, sign in ((1, -1), (2, 1)):
            quality = v + sign * 0.02
            for strategy, iterations, clip, val in (
                    ("baseline", 400, quality, 0.40),
                    ("dvar", 400 if concept == "d" else 100 + sign * 20, 0.9 * quality, 0.38)):
                keys = {"experiment": "paired", "method": "textual_inversion", "strategy": strategy}
                run_id = f"{strategy}-{concept}-{seed}"
                records.write_part(results, "runs", keys, f"{run_id}.parquet", [{
                    "run_id": run_id, "concept": concept, "seed": seed, "status": "completed",
                    "iterations": iterations, "reported_step": iterations, "train_clip_img": clip,
                    "val_clip_img": val, "val_clip_txt": 0.2, "dino": 0.5, "div": 0.7, "time_s": 60.0}])


@pytest.fixture
def runs(tmp_path):
    write_runs(tmp_path)
    return completed_runs(tmp_path, "paired")


def test_cells_carry_a_bootstrap_interval_over_concepts_and_the_seed_spread(runs):
    long = table1(runs).set_index(["strategy", "metric"])
    # per concept (seeds averaged) 0.5, 0.5, 0.5, 0.9: resamples hold k copies of 0.9, k ~ Binomial(4, 1/4);
    # P(k = 0) = 81/256 >= 0.025, P(k <= 2) = 243/256 < 0.975 <= P(k <= 3): the interval is [0.5, 0.8]
    base = long.loc[("baseline", "Train CLIP img")]
    assert (base["mean"], base.lo, base.hi, base.n, base.seeds) == pytest.approx((0.6, 0.5, 0.8, 4, 2))
    assert base.seed_sd == pytest.approx(0.04 / 2 ** 0.5), "std of v - 0.02 and v + 0.02, the same for every concept"
    dvar = long.loc[("dvar", "Iterations")]
    assert (dvar["mean"], dvar.lo, dvar.hi) == pytest.approx((175.0, 100.0, 325.0))  # 100, 100, 100, 400
    assert dvar.seed_sd == pytest.approx(3 * (40 / 2 ** 0.5) / 4), "80 / 120 for three concepts, 400 / 400 for one"
    md = to_markdown(table1(runs)).splitlines()
    assert md[2] == ("| Textual Inversion | Baseline | 0.600 [0.500, 0.800] | 0.400 [0.400, 0.400] | "
                     "0.200 [0.200, 0.200] | 400.0 [400.0, 400.0] | 1.00 [1.00, 1.00] | 4 |")
    assert md[3].startswith("| Textual Inversion | DVAR | 0.540 [0.450, 0.720] |") and "175.0 [100.0, 325.0]" in md[3]
    spread = md[md.index("") + 1:]
    assert spread[0].endswith("| Iterations | Time, min | seeds |")
    assert spread[3] == "| Textual Inversion | DVAR | 0.025 | 0.000 | 0.000 | 21.2 | 0.00 | 2 |"
    assert spread[4].startswith("between-seed spread: the std (ddof=1) between a concept's seeds")


def test_one_seed_has_no_spread_table(runs):
    md = to_markdown(table1(runs[runs.seed == 1]))
    assert "between-seed" not in md and "" not in md.splitlines()


def test_claims_pair_each_strategy_with_baseline_concept_by_concept(runs):
    table = claims(runs).set_index("strategy")
    base, dvar = table.loc["baseline"], table.loc["dvar"]
    assert (base.n, base.iterations, base.speedup, base.kept) == (4, 400.0, 1.0, 1.0)
    # speed-up per concept 4, 4, 4, 1: geometric mean 4^(3/4); resamples all 1x / all 4x bound the interval
    assert (dvar.n, dvar.iterations) == (4, 175.0)
    assert (dvar.speedup, dvar.speedup_lo, dvar.speedup_hi) == pytest.approx((4 ** 0.75, 4 ** 0.25, 4.0))
    assert (dvar.kept, dvar.kept_lo, dvar.kept_hi) == pytest.approx((0.9, 0.9, 0.9))
    # quality: four losses of the same sign, p = 2 / 2^4; updates: concept d ties (dropped), three of one sign
    assert (dvar.p_quality, dvar.p_updates) == pytest.approx((0.125, 0.25))
    assert dvar.delta_val_clip_img == pytest.approx(-0.02) and dvar.delta_val_clip_txt == pytest.approx(0.0)
    row = next(r for r in claims(runs).itertuples() if r.strategy == "dvar")
    assert claim(row) == "2.83x fewer updates [1.41, 4.00], 90.0 % kept [90.0, 90.0], p = 0.25 (updates), " \
                         "0.125 (quality); n = 4"
    md = claims_markdown(claims(runs)).splitlines()
    assert md[2] == "| Textual Inversion | Baseline | 4 | 400 | 1.00x | 100.0 % | - | - | +0.000 | +0.000 |"
    assert md[3] == ("| Textual Inversion | DVAR | 4 | 175 | 2.83x [1.41, 4.00] | 90.0 % [90.0, 90.0] | 0.25 | 0.125 | "
                     "-0.020 | +0.000 |")
    assert md[4].endswith("The exact test cannot give p below 2/2^n: 0.125 with 4 concepts.")
