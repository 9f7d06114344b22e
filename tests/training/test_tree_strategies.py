"""Tree rollout strategies (tree_rpo, tree_rl, bcpg_nsa) on the enumerable toy and on arith.

The toy (tests/training/toy.py) is a tabular softmax over a depth-2 binary tree; here it
learns to continue a token prefix (``PrefixTreePolicy.extend``), so a tree of one-token
segments covers it exactly. Gradient checks follow tests/training/test_estimators.py: the
mean over seeds of minus the gradient of the update's loss against the closed form the
strategy's docstring states, |mean - exact| <= Z standard errors on every coordinate, and a
wrong variant written here must break that bound.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.errors import BudgetExhausted
from engines.task import Task
from engines.trace import NodeEvent, ScoreEvent
from engines.training import build_strategy
from engines.training.base import Allowance, PromptPool, Rollout, TrainingBatch, token_weights
from engines.training.rewards import TrainingReward
from engines.training.strategies.tree_rl import TreeRL, split
from engines.training.strategies.tree_rpo import TreeRPO
from engines.training.tree import VALUE, TreeNode, grow
from engines.training.update import batch_loss
from tests.training.test_estimators import RIGHT, Z, assert_differs, assert_matches, estimates, success
from tests.training.toy import LeafReward, TreePolicy

SEEDS = 400  # fewer than test_estimators: each tree is 6 rows; z bounds hold at any count


class PrefixTreePolicy(TreePolicy):
    """The toy policy, continuing any prefix: ids are (prompt, first token?)."""

    def encode(self, prompt: str) -> list[int]:
        return [self.prompt_index(prompt)]

    def decode(self, ids) -> str:
        return "".join("ab"[t] for t in ids)

    def extend(self, prefixes, *, temperature, max_new_tokens, rng, stop_ids=()):
        out = []
        with torch.no_grad():
            logp = torch.log_softmax(self.theta, dim=-1)
            for prefix in prefixes:
                j, done = prefix[0], list(prefix[1:])
                tokens, logps = [], []
                while len(done) + len(tokens) < 2 and len(tokens) < max_new_tokens:
                    node = 0 if not done and not tokens else 1 + (done + tokens)[0]
                    t = int(torch.multinomial(logp[j, node].exp(), 1, generator=rng))
                    tokens.append(t)
                    logps.append(float(logp[j, node, t]))
                out.append(
                    Rollout(
                        prompt_ids=tuple(prefix), completion_ids=tuple(tokens), logprobs=tuple(logps),
                        text="".join("ab"[t] for t in tokens), finished=len(done) + len(tokens) == 2,
                    )
                )
        return out

    def token_logprobs(self, rollouts):
        logp = torch.log_softmax(self.theta, dim=-1)
        width = max(max(r.tokens for r in rollouts), 1)
        lp = torch.zeros(len(rollouts), width, dtype=logp.dtype)
        ent = torch.zeros(len(rollouts), width, dtype=logp.dtype)
        mask = torch.zeros(len(rollouts), width, dtype=logp.dtype)
        cells = []  # (row, position, prompt, table, token)
        for i, r in enumerate(rollouts):
            j, seq = r.prompt_ids[0], list(r.prompt_ids[1:])
            for position, t in enumerate(r.completion_ids):
                cells.append((i, position, j, 0 if not seq else 1 + seq[0], t))
                seq.append(t)
        if cells:
            i, position, j, node, t = torch.tensor(cells).T
            lp = lp.index_put((i, position), logp[j, node, t])
            ent[i, position] = -(logp[j, node].exp() * logp[j, node]).sum(-1).detach()
            mask[i, position] = 1.0
        return lp, ent, mask


def _theta(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8


def _setup(prompts: int = 2):
    policy = PrefixTreePolicy(_theta()[:prompts])
    pool = PromptPool(tuple(Task(prompt=f"p{j}", chat=False) for j in range(prompts)))
    return policy, pool, TrainingReward(outcome=LeafReward(RIGHT))


def _toy_params(**extra):
    return {"aggregation": "sample_sum", "step": "tokens", "segment_tokens": 1, "max_new_tokens": 2, "depth": 2, **extra}


def run(strategy, policy, pool, reward, budget, seed):
    generator = strategy.collect(policy, pool, reward, budget, torch.Generator().manual_seed(seed))
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def split_gradient(policy) -> tuple[torch.Tensor, torch.Tensor]:
    """(root part, children part) of grad sum_j p_j: the first and second decision's tables."""
    (grad,) = torch.autograd.grad(success(policy).sum(), policy.theta)
    root, children = grad.clone(), grad.clone()
    root[:, 1:] = 0
    children[:, 0] = 0
    return root, children


def exact_prefix_values(policy) -> dict[tuple[int, str], float]:
    """E[r | prompt j, first token] by enumeration."""
    p = torch.softmax(policy.theta.detach(), dim=-1)
    return {(j, "ab"[a]): sum(float(p[j, 1 + a, b]) for b in (0, 1) if "ab"[a] + "ab"[b] in RIGHT[j]) for j in (0, 1) for a in (0, 1)}


# ---------------------------------------------------------------------------
# tree_rpo


def _values_by_node(events):
    nodes = {e.id: e for e in events if isinstance(e, NodeEvent)}
    scores = {e.node: e for e in events if isinstance(e, ScoreEvent)}
    children: dict[str, list[str]] = {}
    for e in nodes.values():
        if e.parent is not None:
            children.setdefault(e.parent, []).append(e.id)
    return nodes, scores, children


def leaf_rewards_below(node_id, children, scores):
    kids = children.get(node_id, [])
    if not kids:
        return [scores[node_id].value]
    return [v for kid in kids for v in leaf_rewards_below(kid, children, scores)]


def assert_values_are_leaf_means(events):
    nodes, scores, children = _values_by_node(events)
    inner = [n for n in nodes.values() if n.parent is not None and children.get(n.id)]
    assert inner
    for node in inner:
        below = leaf_rewards_below(node.id, children, scores)
        assert scores[node.id].partial and scores[node.id].reward == VALUE
        assert abs(scores[node.id].value - sum(below) / len(below)) < 1e-12, node.id


def test_tree_rpo_node_values_are_leaf_means_and_a_single_leaf_value_is_caught():
    policy, pool, reward = _setup()
    strategy = build_strategy("tree_rpo", _toy_params(prompts_per_batch=2, group_size=3))
    events, batch = run(strategy, policy, pool, reward, Allowance(samples=10**6), 0)
    assert_values_are_leaf_means(events)
    assert len(batch) == 2 * (3 + 9)  # every segment is a row

    # wrong variant: a node's value from its first leaf only
    caught = 0
    for seed in range(20):
        events, _ = run(strategy, policy, pool, reward, Allowance(samples=10**6), seed)
        nodes, scores, children = _values_by_node(events)
        single = [
            ScoreEvent(node=e.node, reward=e.reward, value=scores[children[e.node][0]].value, partial=True)
            if isinstance(e, ScoreEvent) and e.partial else e
            for e in events
        ]
        try:
            assert_values_are_leaf_means(single)
        except AssertionError:
            caught += 1
    assert caught > 0


def test_tree_rpo_node_values_converge_to_exact_prefix_values():
    policy, pool, reward = _setup()
    exact = exact_prefix_values(policy)
    errors = {}
    for siblings in (2, 16):
        strategy = build_strategy("tree_rpo", _toy_params(prompts_per_batch=2, group_size=siblings))
        draws: dict[tuple[int, str], list[float]] = {key: [] for key in exact}
        for seed in range(100):
            events, _ = run(strategy, policy, pool, reward, Allowance(samples=10**7), seed)
            nodes, scores, _ = _values_by_node(events)
            for e in nodes.values():
                if e.depth == 1:
                    draws[(e.meta["prompt"], e.text)].append(scores[e.id].value)
        for key, values in draws.items():
            t = torch.tensor(values, dtype=torch.float64)
            z = float((t.mean() - exact[key]).abs() / (t.std() / len(t) ** 0.5 + 1e-12))
            assert z <= Z, (siblings, key, float(t.mean()), exact[key])
        errors[siblings] = max(
            float((torch.tensor(v, dtype=torch.float64) - exact[k]).abs().mean()) for k, v in draws.items()
        )
    assert errors[16] < errors[2] / 2  # mean error of one node's value shrinks like 1/sqrt(leaves below)


def test_tree_rpo_gradient_matches_the_sibling_group_closed_form():
    policy, pool, reward = _setup()
    N, B, M = 2, 2, 2
    strategy = build_strategy("tree_rpo", _toy_params(prompts_per_batch=B, group_size=N, scale_by_std=False))
    samples = estimates(strategy, policy, pool, reward, SEEDS)
    root, children = split_gradient(policy)
    rows = B * (N + N**2)
    exact = (N - 1) / rows * (B / M) * (root + N * children)
    assert_matches(samples, exact)

    class NoSiblingBaseline(TreeRPO):  # wrong variant: a step's advantage is its value
        def set_advantages(self, root):
            for node in root.walk():
                node.advantage = node.value if node.segment is not None else 0.0

    wrong = estimates(NoSiblingBaseline(strategy.config), policy, pool, reward, SEEDS)
    assert_differs(wrong, exact)


def _collect_all(strategy, policy, pool, reward, budget, seed):
    """Collect batches until the budget stops them; every event of the run."""
    events = []
    for step in range(1000):
        strategy.step = step
        try:
            more, batch = run(strategy, policy, pool, reward, budget, seed + step)
        except BudgetExhausted:
            break
        events += more
        if len(batch) == 0:
            break
    return events


TREE_PARAMS = {
    "tree_rpo": _toy_params(prompts_per_batch=2, group_size=3),
    "tree_rl": {"aggregation": "sample_sum", "max_new_tokens": 2, "prompts_per_batch": 2, "group_size": 2, "forks": 2, "branches": 2},
}


@pytest.mark.parametrize("name", sorted(TREE_PARAMS))
def test_tree_budgets_count_every_node_and_are_never_exceeded(name):
    policy, pool, reward = _setup()
    strategy = build_strategy(name, TREE_PARAMS[name])
    for caps in ({"samples": 50}, {"tokens": 77}, {"samples": 40, "tokens": 200}):
        budget = Allowance(**caps)
        events = _collect_all(strategy, policy, pool, reward, budget, 0)
        nodes = [e for e in events if isinstance(e, NodeEvent) and e.parent is not None]
        assert budget.spent_tokens == sum(e.tokens for e in nodes)
        assert budget.spent_samples == sum(e.final for e in nodes)
        for name, cap in caps.items():
            assert getattr(budget, f"spent_{name}") <= cap
        assert budget.spent_samples > 0


@pytest.mark.parametrize("name", sorted(TREE_PARAMS))
def test_tree_same_seed_same_result(name):
    policy, pool, reward = _setup()

    def fresh():
        return build_strategy(name, TREE_PARAMS[name])

    first, batch1 = run(fresh(), policy, pool, reward, Allowance(samples=1000), 7)
    second, batch2 = run(fresh(), policy, pool, reward, Allowance(samples=1000), 7)
    assert first == second and batch1.advantages == batch2.advantages
    third, _ = run(fresh(), policy, pool, reward, Allowance(samples=1000), 8)
    assert third != first


# ---------------------------------------------------------------------------
# tree_rl


def _entropy(logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits, dim=-1)
    return float(-(logp.exp() * logp).sum())


def fork_mismatches(strategy, policy, pool, reward, seeds: int) -> tuple[int, set[int]]:
    """Trees whose one fork is not at the higher-entropy token of the first chain, and the
    fork offsets seen. One chain, one fork: at offset 0 the root gets 3 two-token children;
    at offset 1 the chain splits into its first token with 3 children."""
    theta = policy.theta.detach()
    wrong, offsets = 0, set()
    for seed in range(seeds):
        events, _ = run(strategy, policy, pool, reward, Allowance(samples=10**6), seed)
        nodes, _, children = _values_by_node(events)
        for root in (e for e in nodes.values() if e.parent is None):
            j = root.meta["prompt"]
            first = nodes[children[root.id][0]]
            offset = 0 if len(children[root.id]) == 3 else 1
            assert offset == 0 or (len(children[root.id]) == 1 and first.tokens == 1 and len(children[first.id]) == 3)
            a = "ab".index(first.text[0])
            expected = 0 if _entropy(theta[j, 0]) >= _entropy(theta[j, 1 + a]) else 1
            wrong += offset != expected
            offsets.add(offset)
    return wrong, offsets


def test_tree_rl_forks_at_the_highest_entropy_token_and_random_forks_are_caught():
    policy, pool, reward = _setup()
    params = {"max_new_tokens": 2, "prompts_per_batch": 2, "group_size": 1, "forks": 1, "branches": 2, "iterations": 1}
    strategy = build_strategy("tree_rl", params)
    wrong, offsets = fork_mismatches(strategy, policy, pool, reward, 30)
    assert wrong == 0 and offsets == {0, 1}  # both fork points occur on this toy

    class RandomFork(TreeRL):  # wrong variant: a random token where entropy was claimed
        def fork_points(self, policy, root, forked, rng):
            nodes = [n for n in root.walk() if n.segment is not None]
            node = nodes[int(torch.randint(len(nodes), (1,), generator=rng))]
            return [(node, int(torch.randint(node.tokens, (1,), generator=rng)))]

    wrong, _ = fork_mismatches(RandomFork(strategy.config), policy, pool, reward, 30)
    assert wrong > 0


def test_tree_rl_advantages_are_global_plus_local_over_sqrt_leaves():
    policy, pool, reward = _setup()
    strategy = build_strategy("tree_rl", TREE_PARAMS["tree_rl"])
    for seed in range(10):
        events, batch = run(strategy, policy, pool, reward, Allowance(samples=10**6), seed)
        nodes, scores, children = _values_by_node(events)
        value = {n: (scores[n].value) for n in scores}
        for root in (e for e in nodes.values() if e.parent is None):
            below = leaf_rewards_below(root.id, children, scores)
            value[root.id] = sum(below) / len(below)
        for e in nodes.values():
            if e.parent is None:
                continue
            root = e.id.split(".")[0] + "." + e.id.split(".")[1]
            leaves = len(leaf_rewards_below(e.id, children, scores))
            expected = (2 * value[e.id] - value[root] - value[e.parent]) / leaves**0.5
            assert abs(e.meta["advantage"] - expected) < 1e-12


def test_tree_rl_two_forks_in_one_segment_keep_every_node_id_unique():
    """Splitting a segment moves its children under the new tail; ids counted from the number
    of children would be handed out twice (the trace refuses a repeated node id)."""

    class OneToken:
        def extend(self, prefixes, *, temperature, max_new_tokens, rng, stop_ids=()):
            return [Rollout(prompt_ids=tuple(p), completion_ids=(7,), logprobs=(0.0,), text="x") for p in prefixes]

    root = TreeNode(id="r", parent=None, segment=None, prompt_ids=(1,))
    chain = grow(OneToken(), Allowance(), [root], 1, temperature=1.0, max_new_tokens=1, rng=torch.Generator())[0]
    chain.segment = Rollout(prompt_ids=(1,), completion_ids=(2, 3, 4, 5, 6, 7), logprobs=(0.0,) * 6, text="abcdef")
    decode = lambda ids: "".join("abcdefgh"[i - 2] for i in ids)  # noqa: E731
    for offset in (5, 2):  # two forks in one segment, deepest first (as fork_points orders them)
        node = split(chain, offset, decode)
        grow(OneToken(), Allowance(), [node], 2, temperature=1.0, max_new_tokens=1, rng=torch.Generator())
    ids = [n.id for n in root.walk()]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("aggregation", ["sample_sum", "token_mean", "sequence_mean"])
def test_tree_rl_segment_rows_weigh_like_training_on_every_path(aggregation):
    """The batch's segment rows give the gradient of TreeRL's training data, one sequence per
    root-to-leaf path with each token carrying its segment's advantage; one row per segment
    weighted once (a shared segment counted once, not once per path through it) does not."""
    policy, pool, reward = _setup()
    strategy = build_strategy("tree_rl", {**TREE_PARAMS["tree_rl"], "aggregation": aggregation})

    def gradient(batch):
        loss, _ = batch_loss(policy, batch)
        return torch.autograd.grad(loss, policy.theta)[0]

    wrong_differs = 0
    for seed in range(8):
        events, batch = run(strategy, policy, pool, reward, Allowance(samples=10**6), seed)
        nodes, _, children = _values_by_node(events)
        segments = [e for e in events if isinstance(e, NodeEvent) and e.parent is not None]  # the rows' order
        assert len(segments) == len(batch)
        row = {e.id: i for i, e in enumerate(segments)}
        paths, folded = [], []
        for leaf in (e for e in segments if not children.get(e.id)):
            chain, node = [], leaf
            while node.parent is not None:
                chain.append(row[node.id])
                node = nodes[node.parent]
            chain.reverse()
            parts = [batch.rollouts[i] for i in chain]
            paths.append(Rollout(prompt_ids=parts[0].prompt_ids, completion_ids=sum((p.completion_ids for p in parts), ()),
                                 logprobs=sum((p.logprobs for p in parts), ()), text="", finished=parts[-1].finished))
            folded.append([batch.advantages[i] for i in chain for _ in range(batch.rollouts[i].tokens)])
        per_path = token_weights(paths, [1.0] * len(paths), aggregation)
        path_batch = TrainingBatch(
            rollouts=paths, rewards=[0.0] * len(paths), advantages=[1.0] * len(paths), sample_weights=[1.0] * len(paths),
            token_weights=[[w * a for w, a in zip(ws, adv, strict=True)] for ws, adv in zip(per_path, folded, strict=True)],
        )
        expected = gradient(path_batch)
        assert torch.allclose(gradient(batch), expected, atol=1e-12)
        once = dataclasses.replace(batch, token_weights=token_weights(batch.rollouts, [1.0] * len(batch), aggregation))
        wrong_differs += not torch.allclose(gradient(once), expected, atol=1e-9)
    assert wrong_differs > 0


def tree_rl_expected(policy, T: int, fork_offset) -> torch.Tensor:
    """E[g] of tree_rl with one chain, one fork, T branches, one prompt per batch (the
    closed form in tree_rl's docstring), ``fork_offset(j, a)`` giving the fork token."""
    theta = policy.theta
    logp = torch.log_softmax(theta, dim=-1)
    total = torch.zeros_like(theta)
    M = theta.shape[0]
    for j in range(M):
        p_j = success(policy)[j]
        (grad_p,) = torch.autograd.grad(p_j, theta, retain_graph=True)
        for a in (0, 1):
            pi_a = float(logp[j, 0, a].detach().exp())
            right = torch.tensor([float("ab"[a] + "ab"[b] in RIGHT[j]) for b in (0, 1)], dtype=logp.dtype)
            q_a = (logp[j, 1 + a].exp() * right).sum()
            (grad_q,) = torch.autograd.grad(q_a, theta, retain_graph=True)  # only table 1 + a
            (grad_log_a,) = torch.autograd.grad(logp[j, 0, a], theta, retain_graph=True)
            if fork_offset(j, a) == 0:  # T fresh chains beside the first: rows T + 1
                inner = float(q_a.detach()) * grad_log_a + grad_q - float(p_j.detach()) * grad_log_a
                case = 2 * (T / (T + 1) * inner + T**2 / (T + 1) * grad_p) / (T + 1)
            else:  # the chain splits after a: the head's advantage is 0; T + 1 paths under a
                case = 2 * T * grad_q / (T + 1)
            total += pi_a * case / M
    return total


def test_tree_rl_gradient_matches_the_fork_rule_closed_form():
    policy, pool, reward = _setup()
    T = 2
    params = {"aggregation": "sample_sum", "max_new_tokens": 2, "prompts_per_batch": 1, "group_size": 1,
              "forks": 1, "branches": T, "iterations": 1}
    strategy = build_strategy("tree_rl", params)
    theta = policy.theta.detach()
    by_entropy = lambda j, a: 0 if _entropy(theta[j, 0]) >= _entropy(theta[j, 1 + a]) else 1  # noqa: E731
    exact = tree_rl_expected(policy, T, by_entropy)
    assert_matches(estimates(strategy, policy, pool, reward, SEEDS), exact)
    # wrong variant: the other token than the entropy rule picks
    assert_differs(estimates(strategy, policy, pool, reward, SEEDS), tree_rl_expected(policy, T, lambda j, a: 1 - by_entropy(j, a)))


# ---------------------------------------------------------------------------
# bcpg_nsa on arith: exact step checks


class PlantedPolicy:
    """Returns fixed completions in turn (the arith tokenizer's ids, end-of-text appended)."""

    trainable = True
    name = "planted"

    def __init__(self, policy, completions):
        self.inner, self.completions, self.i = policy, completions, 0

    def encode(self, text):
        return self.inner.encode(text)

    def rollout(self, prompts, *, temperature, max_new_tokens, rng):
        out = []
        for prompt in prompts:
            text = self.completions[self.i % len(self.completions)]
            self.i += 1
            ids = tuple(self.encode(text)) + (self.inner.eos_id,)
            out.append(Rollout(prompt_ids=tuple(self.encode(prompt)), completion_ids=ids,
                               logprobs=(0.0,) * len(ids), text=text))
        return out


@pytest.fixture(scope="module")
def arith_policy():
    from engines.training.policy import load_policy

    return load_policy("embedded:arith")


def test_bcpg_nsa_keeps_exactly_the_correct_steps_of_negative_samples(arith_policy):
    from engines.tasks.arith import check_steps, parse_expression, planted_solution
    from engines.training.rewards import training_reward

    task = Task(prompt="Q: 3+4*5-2\n", chat=False, answer="21")
    problem = parse_expression("3+4*5-2")
    completions = ["\n".join(planted_solution(problem, step, 3)) for step in range(3)]
    completions += ["\n".join([*problem.steps(), f"#### {problem.answer}"]), "7+7=14\n#### 14", "no steps"]
    policy = PlantedPolicy(arith_policy, completions)
    pool = PromptPool((task,))
    strategy = build_strategy("bcpg_nsa", {"prompts_per_batch": 1, "group_size": len(completions)})
    _, batch = run(strategy, policy, pool, training_reward("math"), Allowance(samples=100), 0)
    decode = arith_policy.tokenizer.decode
    prompt_ids = tuple(arith_policy.encode(task.prompt))
    expected = []  # the correct leading steps of each negative sample that has some
    for text in completions:
        lines = [line for line in text.split("\n") if line.strip()]
        valid = check_steps(problem, lines)
        correct = next((k for k, ok in enumerate(valid) if not ok), len(valid))
        if 0 < correct < len(lines):
            expected.append(lines[:correct])
    assert len(expected) == 2  # planted errors at steps 1 and 2
    heads = [(r, a) for r, a in zip(batch.rollouts, batch.advantages, strict=True) if r.prompt_ids == prompt_ids and not r.finished]
    assert sorted(decode(r.completion_ids).splitlines() for r, _ in heads) == sorted(expected)
    right_advantage = 1 - 1 / len(completions)  # one right sample of six
    assert all(abs(a - right_advantage) < 1e-9 for _, a in heads)
    # each mined sample's rest follows its head, with the sample's own (negative) advantage
    tails = [(r, a) for r, a in zip(batch.rollouts, batch.advantages, strict=True) if len(r.prompt_ids) > len(prompt_ids)]
    assert len(tails) == 2 and all(a < 0 for _, a in tails)
    assert len(batch) == len(completions) + 2
