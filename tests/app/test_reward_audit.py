"""The reward audit: its controls score as stated, its best-of-N law is exact, bad input is one line."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from app.cli import main
from app.views.audit import accuracy_figure, audit_markdown, best_of_n_figure, master_key_figure
from app.workflows.reward_audit import MASTER_KEYS, AuditConfig, best_of_n_rejected, run_audit, top_share
from engines.errors import ConfigError

SMALL = {"prompts": "arith", "n": 8, "limit": 8, "resamples": 200}


@pytest.fixture(scope="module")
def exact():
    return run_audit(AuditConfig(reward="math", **SMALL))


def test_the_exact_verifier_has_no_false_positives_and_picks_the_right_answer(exact):
    keys = exact.master_keys
    assert keys["overall"]["rate"] == 0.0 and keys["overall"]["prompts"] == 8
    assert [row["key"] for row in keys["by_key"]] == [k for k, _ in MASTER_KEYS]
    assert all(row["rate"] == 0.0 for row in keys["by_key"])
    assert exact.one_vs_many["rate"] == 1.0 and exact.one_vs_many["prompts"] == 8  # arith adds a right and wrong ones
    assert exact.pairwise_accuracy["rate"] == 1.0
    assert [row["category"] for row in exact.by_category] == ["medium"]
    curve = [row["rate"] for row in exact.best_of_n]
    assert [row["n"] for row in exact.best_of_n] == [1, 2, 4, 8]
    assert curve[0] == pytest.approx(1 - exact.base_accuracy)  # N = 1 is the policy's own error rate
    assert all(b <= a + 1e-12 for a, b in zip(curve, curve[1:], strict=False))  # selecting on the truth only helps


def test_a_random_reward_scores_chance_on_one_vs_many():
    k = 3
    report = run_audit(AuditConfig(reward="random:7", k=k, draws=16, **{**SMALL, "limit": 48}))
    ovm = report.one_vs_many
    assert ovm["chance"] == 1 / (k + 1) and ovm["prompts"] == 48
    # most prompts have one distinct right text, so a prompt is about one independent draw: with 48 the
    # standard error is about sqrt(0.25 * 0.75 / 48) = 0.06 (draws within a prompt add less); 0.15 is 2.5 of them
    assert abs(ovm["rate"] - 1 / (k + 1)) < 0.15, ovm
    assert 0.2 < report.master_keys["overall"]["rate"] < 0.8  # a key beats the median right answer about half the time


def _brute_force(rewards, rejected, n):
    """Every n-subset, ties at the top broken uniformly: the expected share of rejected picks."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(rewards)), n))
    for subset in subsets:
        best = max(rewards[i] for i in subset)
        top = [i for i in subset if rewards[i] == best]
        total += sum(rejected[i] for i in top) / len(top)
    return total / len(subsets)


def _with_replacement(rewards, rejected, n):
    """A wrong law: draws with replacement (the max of n iid draws)."""
    m = len(rewards)
    order = sorted(range(m), key=lambda i: rewards[i])
    return sum(((i + 1) ** n - i**n) / m**n * rejected[order[i]] for i in range(m))


def test_best_of_n_rejections_follow_the_subset_law_with_ties():
    rewards = [0.1, 0.5, 0.5, 0.9, 0.3, 0.5, 0.9]
    rejected = [True, False, True, True, False, True, False]
    for n in range(1, len(rewards) + 1):
        assert best_of_n_rejected(rewards, rejected, n) == pytest.approx(_brute_force(rewards, rejected, n))
    distinct = [0.1, 0.2, 0.3, 0.4, 0.5]
    flags = [False, True, False, True, True]
    assert abs(_with_replacement(distinct, flags, 3) - _brute_force(distinct, flags, 3)) > 0.01  # the check can fail


def test_ties_at_the_top_share_the_win():
    assert top_share(1.0, [0.0, 0.5]) == 1.0 and top_share(0.0, [0.0, 1.0]) == 0.0
    assert top_share(0.5, [0.5, 0.5, 0.1]) == pytest.approx(1 / 3)
    assert top_share(0.0, [0.0, 0.0, 0.0]) == 0.25  # a constant reward is at chance, 1/(k+1)


def test_the_figures_and_the_table_need_no_gradio(exact):
    data = exact.as_dict()
    for fig in (master_key_figure(data), accuracy_figure(data), best_of_n_figure(data)):
        assert fig.to_dict()["data"]
    table = audit_markdown(data)
    assert "master-key false positives | 0.000" in table and "best-of-8" in table


def test_cli_json_and_html(capsys, tmp_path):
    out = tmp_path / "audit.html"
    assert main(["reward", "audit", "math", "--n", "4", "--limit", "3", "--json", "--html", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["one_vs_many"]["rate"] == 1.0 and data["config"]["reward"] == "math"
    page = out.read_text()
    assert "Master keys" in page and "Best-of-N" in page and "https://" not in page.split("<script>")[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "unknown reward 'nosuch'"),
        (["math", "--n", "1"], "N >= 2"),
        (["math", "--prompts", "digits"], "no text prompts"),
        (["math", "--prompts", "nothing-here"], "no prompt set 'nothing-here'"),
    ],
)
def test_bad_input_is_one_line(capsys, args, message):
    assert main(["reward", "audit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_pairwise_reward_is_refused():
    from app.workflows.reward_audit import scorer
    from engines.rewards.base import ScalarAsPairwise
    from engines.rewards.text import Length

    with pytest.raises(ConfigError, match="the audit takes outcome or step rewards"):
        scorer(ScalarAsPairwise(Length()), "length~bt")


def test_config_checks_itself():
    with pytest.raises(ConfigError, match="N >= 2"):
        AuditConfig(reward="math", prompts="arith", n=1)
    assert AuditConfig(reward="math", prompts="arith", n=12).n_levels() == [1, 2, 4, 8, 12]
    assert math.isclose(AuditConfig(reward="math", prompts="arith", k=4).k, 4)


def test_the_data_tab_panel_streams_progress_then_the_audit(tmp_path):
    import gradio as gr

    from app.ui.audit import AuditSection
    from app.ui.services import Services
    from storage import Database

    db = Database.open(f"sqlite:///{tmp_path / 'ui.db'}")
    try:
        with gr.Blocks():
            panel = AuditSection(Services(db=db, device="cpu"))
        updates = list(panel.audit("math", "arith", "math", 4, 2))
        assert "sample 1/2" in updates[0][panel.status]
        assert "one-vs-3 accuracy (chance 0.250) | 1.000" in updates[-1][panel.summary]
        refused = list(panel.audit("<b>nosuch</b>", "arith", "math", 4, 2))[-1][panel.summary]
        assert refused.startswith("⚠ unknown reward") and "<b>" not in refused  # the bad spec is escaped
    finally:
        db.close()
