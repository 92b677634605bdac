"""The reinforcement-learning families (dlzoo/rl/): every family fits and evaluates through the pipeline's
own train and evaluate entry points, the pieces of the algorithms do what the books say (the Q-learning
target on a hand-made MDP, the policy-gradient sign on a bandit), a seed gives one evaluation return, and
bad input (an unknown environment, an action space a family cannot use, a checkpoint of another environment)
stops with a one-line error before anything is written to the MLflow store. The generic compress stage takes an
agent: dynamic int8, and policy distillation against its control, measured on the teacher's test seeds."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF, mlflow_runs, run_entry, sqlite_ok
from dlzoo.compression.compress import compress, for_profile
from dlzoo.errors import CheckpointError, ConfigError
from dlzoo.evaluation.evaluate import evaluate
from dlzoo.models import count_parameters
from dlzoo.rl.compress import distill, distill_loss
from dlzoo.rl.dqn import td_target
from dlzoo.rl.nets import ActorCritic
from dlzoo.rl.reinforce import policy_gradient_loss
from dlzoo.rl.rollout import bootstrap_truncations, gae
from dlzoo.training.train import train

FAMILIES = ["reinforce", "a2c", "dqn", "ppo"]
SMOKE = ["profile=smoke", "tracking.log_model=false", "runner.total_steps=1200", "runner.eval_every_steps=600",
         "runner.val_episodes=2", "evaluator.episodes=3"]
EXTRA = {"dqn": ["runner.learning_starts=200", "runner.train_frequency=64", "runner.gradient_steps=8"],
         "ppo": ["runner.num_steps=50"]}


def _cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def _smoke(family: str, *more: str):
    return _cfg(f"experiment=control-cartpole-{family}", *SMOKE, *EXTRA.get(family, []), *more)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One scratch working directory (one MLflow store) shared by the fits of this module."""
    path = tmp_path_factory.mktemp("control")
    old = os.getcwd()
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "DVC_STAGE") if k in os.environ}
    os.chdir(path)
    yield path
    os.chdir(old)
    os.environ.update(saved)


@pytest.fixture(scope="module")
def fitted(store):
    """family -> (summary, metrics) of a smoke fit + evaluation of each family on CartPole-v1."""
    out = {}
    for family in FAMILIES:
        gif = "true" if family == "ppo" else "false"  # one rendered episode is enough to exercise the GIF
        out[family] = (train(_smoke(family)), evaluate(_smoke(family, f"evaluator.gif={gif}")))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_fit_through_train_and_evaluate(family, fitted, store):
    summary, metrics = fitted[family]
    assert summary["env_steps"] >= 1200 and summary["best_score"] is not None and summary["num_params"] > 0
    assert (store / f"artifacts/models/control-cartpole-{family}/best.ckpt").is_file()
    assert (store / f"plots/control-cartpole/{family}/learning_curve.csv").is_file()
    on_disk = json.loads((store / f"metrics/control-cartpole/{family}.json").read_text())
    assert on_disk == metrics
    for key in ("test/return_mean", "test/return_std", "baseline/random_return_mean", "train/env_steps", "solve/reached"):
        assert key in metrics
    assert metrics["test/episodes"] == 3 and metrics["train/stopped_by_clock"] == 0.0
    # the test episodes are the evaluator's seeds 2,000,000 + k, and the metrics are those episodes' statistics
    reports = store / f"artifacts/reports/control-cartpole-{family}"
    with open(reports / "test_returns.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["seed"]) for r in rows] == [2_000_000, 2_000_001, 2_000_002]
    returns = [float(r["return"]) for r in rows]
    assert metrics["test/return_mean"] == pytest.approx(sum(returns) / 3)
    assert metrics["test/return_min"] == min(returns) and metrics["test/return_max"] == max(returns)
    # the random baseline runs on the same seeds for every family, so it is the same number for all four
    assert metrics["baseline/random_return_mean"] == fitted["reinforce"][1]["baseline/random_return_mean"]
    reports = store / f"artifacts/reports/control-cartpole-{family}"
    assert (reports / "learning_curve.png").is_file() and (reports / "value_heatmap.png").is_file()
    assert (reports / "episode.gif").is_file() == (family == "ppo")
    runs = [r for r in mlflow_runs(store / "mlflow.db") if r["name"] == family]
    assert {r["tags"]["stage"] for r in runs} == {"train", "evaluate"}
    assert all(r["experiment"] == "control-cartpole" and r["status"] == "FINISHED" for r in runs)


@pytest.mark.parametrize("family", FAMILIES)
def test_lunarlander_recipes_fit_and_evaluate(family, store):
    """The full profile's LunarLander-v3 recipes (Box2D, installed by pyproject.toml) at smoke size, through the
    same train and evaluate entry points: the recipe composes, its runner takes its keys, the agent acts."""
    cfg = _cfg(f"experiment=control-lunarlander-{family}", *SMOKE, *EXTRA.get(family, []),
               *(["runner.num_minibatches=2"] if family == "ppo" else []), "evaluator.gif=false")
    assert cfg.only_profile == "full" and cfg.env.id == "LunarLander-v3"
    summary = train(cfg)
    metrics = evaluate(cfg)
    assert summary["env_id"] == "LunarLander-v3" and summary["env_steps"] >= 1200
    assert metrics["test/episodes"] == 3 and "baseline/random_return_mean" in metrics
    assert json.loads((store / f"metrics/control-lunarlander/{family}.json").read_text()) == metrics
    runs = [r for r in mlflow_runs(store / "mlflow.db") if r["experiment"] == "control-lunarlander" and r["name"] == family]
    assert sorted(r["tags"]["stage"] for r in runs) == ["evaluate", "train"]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_evaluation_return(family, fitted, store, tmp_path, monkeypatch):
    """Each family's smoke fit again, in another directory: the same checkpoint tensors, the same test returns."""
    monkeypatch.chdir(tmp_path)
    train(_smoke(family))
    metrics = evaluate(_smoke(family, "evaluator.gif=false"))
    assert metrics["test/return_mean"] == fitted[family][1]["test/return_mean"]
    assert metrics["test/return_std"] == fitted[family][1]["test/return_std"]
    ckpt = f"artifacts/models/control-cartpole-{family}/best.ckpt"
    first = torch.load(store / ckpt, weights_only=True)["state_dict"]
    again = torch.load(tmp_path / ckpt, weights_only=True)["state_dict"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


# ----------------------------------------------------------------------------- the algorithms' pieces
class TabularQ(torch.nn.Module):
    """Q(s, ·) as a table: the observation is the one-hot state."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, obs):
        return obs @ self.table


A, B = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])


def test_q_learning_target_on_a_two_state_mdp():
    """State A: action 0 stays in A (reward 0), action 1 moves to B (reward 1). State B: action 0 ends the
    episode with reward 10, action 1 with reward 0. With γ = 0.9: Q*(B) = (10, 0), Q*(A) = (9, 10)."""
    gamma = 0.9
    # one transition A --1--> B, reward 1: r + γ max_a Q_target(B, a), and just r when B is terminal
    target_net = TabularQ([[0.0, 0.0], [2.0, 5.0]])
    obs_next, reward = B.unsqueeze(0), torch.tensor([1.0])
    assert td_target(reward, obs_next, torch.tensor([0.0]), gamma, target_net).item() == pytest.approx(1 + 0.9 * 5)
    assert td_target(reward, obs_next, torch.tensor([1.0]), gamma, target_net).item() == pytest.approx(1.0)
    # Double DQN: the online network picks a' in B (action 0), the target network scores it (2.0)
    online = TabularQ([[0.0, 0.0], [3.0, 1.0]])
    assert td_target(reward, obs_next, torch.tensor([0.0]), gamma, target_net, online).item() == pytest.approx(1 + 0.9 * 2)

    # iterating the target (a target network refreshed every 10 steps) reaches Q*
    obs = torch.stack([A, A, B, B])
    actions, rewards = torch.tensor([0, 1, 0, 1]), torch.tensor([0.0, 1.0, 10.0, 0.0])
    next_obs, terminated = torch.stack([A, B, B, B]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    q = TabularQ([[0.0, 0.0], [0.0, 0.0]])
    target = TabularQ([[0.0, 0.0], [0.0, 0.0]])
    optimizer = torch.optim.SGD(q.parameters(), lr=0.5)
    for step in range(400):
        if step % 10 == 0:
            target.load_state_dict(q.state_dict())
        y = td_target(rewards, next_obs, terminated, gamma, target)
        loss = (q(obs).gather(1, actions.unsqueeze(1)).squeeze(1) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.allclose(q.table, torch.tensor([[9.0, 10.0], [10.0, 0.0]]), atol=1e-3)


def test_policy_gradient_raises_the_probability_of_a_rewarded_arm():
    """A two-armed bandit: one gradient step on −log π(a) · A moves π(a) up when A > 0 and down when A < 0,
    by the analytic gradient −A (1[k = a] − π_k)."""
    for advantage, direction in ((1.0, 1), (-1.0, -1)):
        logits = torch.zeros(2, requires_grad=True)
        dist = torch.distributions.Categorical(logits=logits)
        loss = policy_gradient_loss(dist.log_prob(torch.tensor([1])), torch.tensor([advantage]))
        loss.backward()
        assert torch.allclose(logits.grad, -advantage * (torch.tensor([0.0, 1.0]) - torch.tensor([0.5, 0.5])))
        with torch.no_grad():
            new = torch.softmax(logits - 0.1 * logits.grad, 0)[1].item()
        assert (new - 0.5) * direction > 0

    # and REINFORCE's loop on the bandit: arm 1 pays 1, arm 0 pays 0 -> π(arm 1) → 1
    torch.manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    for _ in range(200):
        dist = torch.distributions.Categorical(logits=logits)
        arms = dist.sample((16,))
        rewards = arms.float()
        loss = policy_gradient_loss(dist.log_prob(arms), rewards - rewards.mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.softmax(logits, 0)[1].item() > 0.95


def test_gae_on_a_hand_made_rollout_with_a_truncation():
    """Two environments, three steps, γ = 0.5, λ = 0.5. Env 0 is cut by the time limit after step 1 (its reward
    gets γ V(s_T) = 0.5 · 4 from its last observation) and starts a new episode at step 2; env 1 terminates at
    step 2. The advantages are δ_t + γλ δ_{t+1} ..., each sum stopping at an episode's end."""
    gamma, lam = 0.5, 0.5
    reward_step1 = np.array([1.0, 1.0], dtype=np.float32)
    final_obs = [np.array([4.0]), None]   # gymnasium's info["final_obs"]: env 0's last observation
    bootstrap_truncations(reward_step1, np.array([False, False]), np.array([True, False]), final_obs,
                          lambda obs: obs.sum(-1), gamma)  # V(s) = s: V(s_T) = 4
    assert reward_step1.tolist() == [1.0 + 0.5 * 4.0, 1.0]
    # a terminated environment gets no bootstrap
    untouched = np.array([1.0], dtype=np.float32)
    bootstrap_truncations(untouched, np.array([True]), np.array([True]), [np.array([4.0])], lambda o: o.sum(-1), gamma)
    assert untouched.tolist() == [1.0]

    rewards = torch.tensor([[1.0, 1.0], reward_step1.tolist(), [1.0, 1.0]])
    values = torch.tensor([[2.0, 1.0], [3.0, 1.0], [2.0, 1.0]])
    dones = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    next_value = torch.tensor([6.0, 9.0])
    advantages, returns = gae(rewards, values, dones, next_value, gamma, lam)
    # env 0: δ2 = 1 + 0.5·6 − 2 = 2; δ1 = 3 − 3 = 0 (episode ends: no γV(s_2), no later δ); δ0 = 1 + 0.5·3 − 2 = 0.5
    #        A2 = 2, A1 = 0, A0 = 0.5 + 0.25·0 = 0.5
    # env 1: δ2 = 1 − 1 = 0 (terminated); δ1 = 1 + 0.5·1 − 1 = 0.5; δ0 = 0.5; A1 = 0.5, A0 = 0.5 + 0.25·0.5
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.625], [0.0, 0.5], [2.0, 0.0]]))
    assert torch.allclose(returns, advantages + values)
    # λ = 1: the discounted n-step return minus V (A2C's advantage)
    advantages, _ = gae(rewards, values, dones, next_value, gamma, 1.0)
    assert advantages[0, 1].item() == pytest.approx(1 + 0.5 * 1 + 0.25 * 1 - 1.0)


# ----------------------------------------------------------------------------- bad input
def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_unknown_environment_is_a_one_line_error(tmp_path):
    result = run_entry("train", "experiment=control-cartpole-ppo", "env.id=CartPoel-v1", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: unknown environment id 'CartPoel-v1'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists() or mlflow_runs(tmp_path / "mlflow.db") == []


def test_bad_input_leaves_the_store_intact(fitted, store):
    db = store / "mlflow.db"
    before = mlflow_runs(db)
    # a family that cannot use the action space: DQN on a continuous one
    with pytest.raises(ConfigError) as exc:
        train(_smoke("dqn", "env.id=Pendulum-v1"))
    assert "dqn needs a discrete action space" in _one_line(exc) and "Pendulum-v1" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        train(_smoke("ppo", "env.id=NoSuchEnv-v0"))
    assert "unknown environment id 'NoSuchEnv-v0'" in _one_line(exc)
    # a checkpoint of another environment: CartPole's PPO given to Acrobot's ...
    cartpole_ckpt = store / "artifacts/models/control-cartpole-ppo/best.ckpt"
    with pytest.raises(CheckpointError) as exc:
        evaluate(_cfg("experiment=control-acrobot-ppo", *SMOKE, f"checkpoint_path={cartpole_ckpt}"))
    assert "holds a control-cartpole/ppo model, not control-acrobot/ppo" in _one_line(exc)
    # ... or its own recipe pointed at another environment
    with pytest.raises(CheckpointError) as exc:
        evaluate(_smoke("ppo", "env.id=Acrobot-v1"))
    assert "a checkpoint of another environment" in _one_line(exc)
    assert sqlite_ok(db) and len(mlflow_runs(db)) == len(before)
    assert all(r["status"] == "FINISHED" for r in mlflow_runs(db))


BAD_INPUT = [  # (family, override, what the one-line error must name)
    ("ppo", "runner.eval_every_steps=0", "runner.eval_every_steps"),
    ("a2c", "runner.num_envs=0", "runner.num_envs"),
    ("reinforce", "runner.total_steps=-5", "runner.total_steps"),
    ("dqn", "runner.target_update_steps=0", "runner.target_update_steps"),
    ("ppo", "runner.gae_lambda=1.5", "runner.gae_lambda"),
    ("ppo", "+model.activation=gelu", "model.activation"),
    ("dqn", "+model.activation=gelu", "model.activation"),
    ("a2c", "+runner.optimizer=sgd", "runner.optimizer"),
    ("dqn", "+runner.loss=l1", "runner.loss"),
    ("ppo", "+runner.learning_rte=1e-3", "runner.learning_rte"),
    ("dqn", "seed=999999", "seed"),
]


@pytest.mark.parametrize("family,override,key", BAD_INPUT, ids=[f"{f}:{o}" for f, o, _ in BAD_INPUT])
def test_bad_runner_or_model_values_are_one_line_errors_without_a_run(family, override, key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        train(_smoke(family, override))
    assert key in _one_line(exc)
    assert not (tmp_path / "mlflow.db").exists() or mlflow_runs(tmp_path / "mlflow.db") == []


def test_unknown_runner_key_through_the_entry_point(tmp_path):
    result = run_entry("train", "experiment=control-cartpole-a2c", "+runner.learning_rte=1e-3", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "runner.learning_rte" in result.stderr and "learning_rate" in result.stderr
    assert not (tmp_path / "mlflow.db").exists() or mlflow_runs(tmp_path / "mlflow.db") == []


# ----------------------------------------------------------------------------- compression through the compress stage
def _compress_cfg(method: str, *more: str):
    """The compress stage's config for the smoke-fitted CartPole A2C (the recipe that declares RL compression)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # compress.onnx.export as the stage command sets it from the recipe (compression.onnx: false)
        cfg = compose(config_name="compression", overrides=["experiment=control-cartpole-a2c", f"compress={method}",
                                                             *SMOKE, "evaluator.gif=false", "compress.onnx.export=false", *more])
    GlobalHydra.instance().clear()
    return for_profile(cfg)


def _test_seeds(folder) -> list[int]:
    with open(folder / "test_returns.csv") as f:
        return [int(r["seed"]) for r in csv.DictReader(f)]


def _run_names(db) -> Counter:
    return Counter(r["name"] for r in mlflow_runs(db))


def test_dynamic_int8_agent_through_the_compress_stage(fitted, store):
    """The generic stage takes an agent (no data, a plain network): int8 policy and critic, measured by the RL
    evaluator on the parent's test seeds, timed on observations from the recipe's examples hook."""
    db = store / "mlflow.db"
    before = _run_names(db)
    metrics = compress(_compress_cfg("dynamic-int8"))
    parent = fitted["a2c"][1]
    out = store / "artifacts/compressed/control-cartpole/a2c-dynamic-int8"
    assert _test_seeds(out / "evaluation") == _test_seeds(store / "artifacts/reports/control-cartpole-a2c")
    # the parent re-measured in the stage is the evaluate stage's own number: like for like
    assert metrics["parent/test/return_mean"] == parent["test/return_mean"]
    assert metrics["parent/baseline/random_return_mean"] == metrics["baseline/random_return_mean"]
    # every Linear of policy and critic is int8 (counted with the module holding its packed weights)
    assert metrics["quantized_modules"] == 2 * sum(isinstance(m, torch.nn.Linear) for m in ActorCritic("CartPole-v1").modules())
    assert metrics["num_params"] == parent["num_params"] and metrics["size_ratio"] > 2
    assert {"speedup_b1", "speedup_b32_lo", "speedup_b32_hi"} <= set(metrics)
    assert json.loads((store / "metrics/control-cartpole/a2c-dynamic-int8.json").read_text()) == metrics
    assert _run_names(db) - before == Counter(["a2c-dynamic-int8"])
    run = next(r for r in mlflow_runs(db) if r["name"] == "a2c-dynamic-int8")
    summary = json.loads((store / "artifacts/models/control-cartpole-a2c/train_summary.json").read_text())
    assert run["status"] == "FINISHED" and run["tags"]["stage"] == "compress"
    assert run["tags"]["method"] == "dynamic-int8" and run["tags"]["parent_run_id"] == summary["run_id"]


def test_policy_distillation_and_its_control_through_the_compress_stage(fitted, store):
    """The same small student, distilled from the agent or trained by the agent's own runner without it; both
    measured on the teacher's test seeds, neither credited with the teacher's training curve."""
    db = store / "mlflow.db"
    before = _run_names(db)
    cfg = _compress_cfg("policy-distill")
    distilled = compress(cfg)
    control = compress(_compress_cfg("policy-distill-control"))
    student = count_parameters(ActorCritic("CartPole-v1", hidden=list(cfg.compress.apply.student.hidden)))
    for m in (distilled, control):
        assert m["student_params"] == m["num_params"] == student
        assert m["teacher_params"] == fitted["a2c"][1]["num_params"] and m["student_fraction"] <= 0.1
        assert m["parent/test/return_mean"] == fitted["a2c"][1]["test/return_mean"]
        assert m["retention"] == pytest.approx((m["test/return_mean"] - m["baseline/random_return_mean"])
                                               / (m["parent/test/return_mean"] - m["parent/baseline/random_return_mean"]))
        assert not any("solve/" in k or "train/" in k for k in m)
    assert distilled["student/env_steps"] == cfg.compress.apply.total_steps and distilled["student/stopped_by_clock"] == 0
    assert control["student/env_steps"] >= cfg.runner.total_steps and control["student/stopped_by_clock"] == 0
    assert distilled["retention_min"] == cfg.compress.acceptance.min_retention and "retention_passed" in distilled
    assert "retention_passed" not in control
    for method in ("policy-distill", "policy-distill-control"):
        folder = store / f"artifacts/compressed/control-cartpole/a2c-{method}"
        assert _test_seeds(folder / "evaluation") == [2_000_000, 2_000_001, 2_000_002]
        assert (folder / "evaluation/value_heatmap.png").is_file() and not (folder / "evaluation/episode.gif").exists()
    # the control's training opened no MLflow run of its own: one compress run per stage, nothing else
    assert _run_names(db) - before == Counter(["a2c-policy-distill", "a2c-policy-distill-control"])


BAD_COMPRESS = [  # (method, override, what the one-line error must name)
    ("policy-distill", "compress.apply.student.hidden=[128]", "compress.apply.student"),
    ("policy-distill-control", "compress.apply.student.hidden=[128]", "compress.apply.student"),
    ("policy-distill", "compress.apply.batch_size=0", "batch_size"),
    ("policy-distill", "+compress.evaluator.gif_every_nth=3", "compress.evaluator.gif_every_nth"),
    ("prune-unstructured", None, "data.module"),   # a method that fine-tunes on training data
    ("fp16", None, "keeps the network's class"),    # a wrapper without the agent's greedy/state_value
]


@pytest.mark.parametrize("method,override,key", BAD_COMPRESS, ids=[f"{m}:{o}" for m, o, _ in BAD_COMPRESS])
def test_bad_compress_input_is_a_one_line_error_without_a_run(method, override, key, fitted, store):
    db = store / "mlflow.db"
    before = _run_names(db)
    written = {p: p.read_bytes() for p in (store / "metrics/control-cartpole").glob("*.json")}
    with pytest.raises(ConfigError) as exc:
        compress(_compress_cfg(method, *([override] if override else [])))
    assert key in _one_line(exc)
    assert _run_names(db) == before
    assert {p: p.read_bytes() for p in (store / "metrics/control-cartpole").glob("*.json")} == written


def test_policy_distillation_moves_the_student_towards_its_teacher(fitted, store):
    """The distillation loss itself: KL(teacher ‖ student) on held-out states falls from the untrained student's."""
    teacher = ActorCritic("CartPole-v1", hidden=[64, 64])
    teacher.load_state_dict(torch.load(store / "artifacts/models/control-cartpole-ppo/best.ckpt", weights_only=True)["state_dict"])
    teacher.eval()
    states = torch.randn(512, 4) * torch.tensor([1.0, 1.0, 0.1, 1.0])
    torch.manual_seed(0)
    student = ActorCritic("CartPole-v1", hidden=[16])
    with torch.no_grad():
        before = distill_loss(student(states), teacher(states), 1.0).item()
    student, info = distill(teacher, student, "CartPole-v1", total_steps=1000, rounds=2, epochs=10)
    with torch.no_grad():
        after = distill_loss(student(states), teacher(states), 1.0).item()
    assert info["student_fraction"] <= 0.1 and info["student/env_steps"] == 1000 and after < before
