"""AlphaGo (the "Lee" system of Silver et al. 2016) on small-board Go, scaled down (issue 12), read top to bottom:
`train(cfg, ctx, **runner) -> dict`, conf/experiment/go-5x5-alphago-lee.yaml.

No human 5x5 game records exist offline, so the "expert" games are SEARCHER games: a lock-step PUCT search with
uniform priors and random-rollout leaf values (no network), `expert_simulations` per move. Then, as in the paper:
(a) a supervised (SL) policy network (the ZeroNet class, its policy head) and a linear-softmax rollout policy
    (one linear layer over the stone planes, no hand-made patterns) learn the searcher's move distributions;
(b) the RL policy starts as the SL policy and improves by REINFORCE in games against a pool of its earlier versions
    (reward z = +-1 at the game's end, the batch's mean outcome as the baseline); the version kept is the one with
    the best win rate of the network alone against random at the pool snapshots, the SL start (step 0) included
    (early stopping: plain REINFORCE drifted to a degenerate policy after ~60 steps at lr 1e-4 in a trial);
(c) the value network (the ZeroNet class, its value head) regresses z on ONE position per self-play game (as in the
    paper, to avoid correlated positions): the SL policy plays U moves (U uniform up to `max_random_move`, about a
    whole 5x5 game), then one uniformly random move, then the RL policy plays to the end; the position after the
    random move is the example;
(d) the player: PUCT search (dlzoo.go.mcts, lock-step) with the SL policy's priors and the lambda-mixed leaf value
    V = (1 - lambda) v_theta(s) + lambda z_rollout, z_rollout the end of a game played by the rollout policy.
Each phase writes learning-curve rows; the checkpoint holds all four models (`LeeNets`).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlzoo.config import build
from dlzoo.go.game import augment, encode, load_game
from dlzoo.go.mcts import most_visited, search
from dlzoo.go.net import ZeroNet
from dlzoo.go.parallel import fork_map, split_sizes
from dlzoo.go.players import NetEvaluator, NetPlayer, RandomPlayer, SearchPlayer, play_match
from dlzoo.go.zero import check_args


# ----------------------------------------------------------------------------- the models
def rollout_features(planes: np.ndarray) -> np.ndarray:
    """(B, PLANES, N, N) planes -> (B, 2 N^2 + 1): own stones, opponent stones, and "black to play"."""
    b = planes.shape[0]
    return np.concatenate([planes[:, :2].reshape(b, -1), planes[:, 2, :1, 0]], axis=1).astype(np.float32)


class RolloutPolicy(nn.Module):
    """The fast rollout policy: a linear softmax over `rollout_features` (N^2 + 1 logits: the points and the pass)."""

    def __init__(self, board_size: int):
        super().__init__()
        self.linear = nn.Linear(2 * board_size * board_size + 1, board_size * board_size + 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class LeeNets(nn.Module):
    """The four trained models of AlphaGo in one module (one checkpoint): the SL policy, the RL policy, the value
    network (ZeroNet's value head) and the rollout policy. `forward` is the RL policy's logits and the value."""

    def __init__(self, board_size: int, channels: int = 32, blocks: int = 2, value_hidden: int = 64):
        super().__init__()
        self.sl = ZeroNet(board_size, channels, blocks, value_hidden)
        self.rl = ZeroNet(board_size, channels, blocks, value_hidden)
        self.value = ZeroNet(board_size, channels, blocks, value_hidden)
        self.rollout = RolloutPolicy(board_size)

    @property
    def board_size(self) -> int:
        return self.sl.board_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rl(x)[0], self.value(x)[1]


# ----------------------------------------------------------------------------- rollouts and the mixed leaf value
def rollout_values(states, board_size: int, rng: np.random.Generator, policy: RolloutPolicy | None = None,
                   trace: list | None = None) -> np.ndarray:
    """Each state played to its end (all in lock-step) by the rollout policy, moves sampled from its softmax over
    the legal moves (policy None: uniformly random moves); the outcome for the player to move at the start.
    `trace`, if given, receives each rollout's list of moves."""
    players = [s.current_player() if not s.is_terminal() else 0 for s in states]
    sims = [s.clone() for s in states]
    moves = {id(s): [] for s in sims}
    num_actions = board_size * board_size + 1
    if policy is not None:
        w = policy.linear.weight.detach().numpy().astype(np.float64).T
        b = policy.linear.bias.detach().numpy().astype(np.float64)
    while True:
        live = [s for s in sims if not s.is_terminal()]
        if not live:
            break
        legal = np.stack([np.asarray(s.legal_actions_mask(), dtype=bool)[:num_actions] for s in live])
        if policy is None:
            logits = np.zeros(legal.shape)
        else:
            logits = rollout_features(np.stack([encode(s, board_size) for s in live])) @ w + b
        gumbel = -np.log(-np.log(rng.random(legal.shape)))      # argmax(logits + Gumbel) samples the softmax
        actions = np.argmax(np.where(legal, logits + gumbel, -np.inf), axis=1)
        for s, a in zip(live, actions):
            s.apply_action(int(a))
            moves[id(s)].append(int(a))
    if trace is not None:
        trace.extend(moves[id(s)] for s in sims)
    return np.array([s.returns()[p] for s, p in zip(sims, players)], dtype=np.float64)


def mixed_value(v_theta: np.ndarray, z_rollout: np.ndarray, lam: float) -> np.ndarray:
    """AlphaGo's leaf evaluation: V(s) = (1 - lambda) v_theta(s) + lambda z_rollout."""
    return (1.0 - lam) * np.asarray(v_theta, dtype=np.float64) + lam * np.asarray(z_rollout, dtype=np.float64)


def own_eyes(states, board_size: int) -> np.ndarray:
    """[B, N*N + 1] bool: the points that would fill the mover's own eye (an empty point whose on-board orthogonal
    neighbours are all the mover's stones); the pass is never one. AlphaGo's policy inputs include this
    "sensibleness" (a move is legal and does not fill its own eye): without it the argmax policy fills its own eyes
    late in a won game until its groups die, which a random opponent never punishes in self-play but scoring does."""
    n = board_size
    out = np.zeros((len(states), n * n + 1), dtype=bool)
    for i, state in enumerate(states):
        obs = np.asarray(state.observation_tensor(0), dtype=bool).reshape(4, n, n)  # black, white, empty, white-to-play
        mine = np.pad(obs[state.current_player()], 1, constant_values=True)  # off the board counts as own
        eye = obs[2] & mine[:-2, 1:-1] & mine[2:, 1:-1] & mine[1:-1, :-2] & mine[1:-1, 2:]
        out[i, : n * n] = eye.ravel()
    return out


class SensibleEvaluator(NetEvaluator):
    """NetEvaluator whose priors give no weight to filling one's own eye (renormalised; the pass stays)."""

    def __call__(self, states) -> tuple[np.ndarray, np.ndarray]:
        priors, values = super().__call__(states)
        priors[own_eyes(states, self.board_size)[:, : priors.shape[1]]] = 0.0
        return priors / priors.sum(axis=1, keepdims=True), values


class LeeEvaluator:
    """The leaf evaluator of AlphaGo's search (for dlzoo.go.mcts.search): priors from the SL policy, values
    lambda-mixed from the value network and one rollout of the rollout policy."""

    def __init__(self, nets: LeeNets, board_size: int, lam: float, rng: np.random.Generator):
        self.policy, self.value = SensibleEvaluator(nets.sl, board_size), NetEvaluator(nets.value, board_size)
        self.rollout, self.board_size, self.lam, self.rng = nets.rollout.eval(), board_size, float(lam), rng
        self.evaluations, self.seconds = 0, 0.0

    def __call__(self, states) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        priors, _ = self.policy(states)
        v_theta = self.value(states)[1] if self.lam < 1 else np.zeros(len(states))
        z = rollout_values(states, self.board_size, self.rng, self.rollout) if self.lam > 0 else np.zeros(len(states))
        self.evaluations += len(states)
        self.seconds += time.perf_counter() - start
        return priors, mixed_value(v_theta, z, self.lam)


def rollout_evaluator(board_size: int, rng: np.random.Generator):
    """The expert searcher's leaves: uniform priors, the value of one uniformly random playout (no network).
    The priors carry a 0.1% random jitter: with exactly equal priors PUCT's argmax breaks every tie toward the lowest
    point index, and the searcher (and the policies learnt from it) then favour the first row of the board."""
    num_actions = board_size * board_size + 1

    def evaluate(states):
        priors = 1.0 + 1e-3 * rng.random((len(states), num_actions))
        return priors / priors.sum(axis=1, keepdims=True), rollout_values(states, board_size, rng)
    return evaluate


# ----------------------------------------------------------------------------- (a) searcher games, SL and rollout policies
def searcher_games(game, board_size: int, num_games: int, simulations: int, c_puct: float, sample_moves: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """(planes, search policies π, stats) of `num_games` games of the rollout searcher against itself; each
    side's first `sample_moves` moves sampled from the visits (so the games differ), the rest the most visited."""
    start = time.perf_counter()
    states = [game.new_initial_state() for _ in range(num_games)]
    planes, pis = [], []
    evaluator = rollout_evaluator(board_size, rng)
    while True:
        live = [s for s in states if not s.is_terminal()]
        if not live:
            break
        for s, n in zip(live, search(live, evaluator, simulations, c_puct)):
            pi = n / n.sum()
            planes.append(encode(s, board_size))
            pis.append(pi)
            sampled = s.move_number() < 2 * sample_moves
            s.apply_action(int(rng.choice(len(pi), p=pi)) if sampled else most_visited(n, rng))
    black = float(np.mean([s.returns()[0] > 0 for s in states]))
    stats = {"games": num_games, "positions": len(pis), "seconds": time.perf_counter() - start, "black_win_rate": black}
    return np.stack(planes), np.stack(pis).astype(np.float32), stats


def searcher_games_parts(game, board_size: int, num_games: int, simulations: int, c_puct: float, sample_moves: int,
                         seeds, workers: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """`searcher_games` split into len(seeds) parts (part k from np.random.default_rng(seeds[k])), in up to
    `workers` processes (dlzoo.go.parallel): the same games whatever `workers` is."""
    sizes = split_sizes(num_games, len(seeds))
    start = time.perf_counter()
    results = fork_map(_searcher_part, [(game, board_size, size, simulations, c_puct, sample_moves, seed)
                                        for size, seed in zip(sizes, seeds)], workers)
    black = sum(st["black_win_rate"] * st["games"] for *_, st in results) / num_games
    stats = {"games": num_games, "positions": sum(st["positions"] for *_, st in results),
             "seconds": time.perf_counter() - start, "black_win_rate": black}
    return np.concatenate([p for p, *_ in results]), np.concatenate([pi for _, pi, _ in results]), stats


def _searcher_part(game, board_size, num_games, simulations, c_puct, sample_moves, seed):
    return searcher_games(game, board_size, num_games, simulations, c_puct, sample_moves, np.random.default_rng(seed))


def fit_policy(forward, params, planes: np.ndarray, pis: np.ndarray, steps: int, batch_size: int, lr: float,
               rng: np.random.Generator, val_fraction: float = 0.1) -> tuple[float, float, float]:
    """Cross-entropy of `forward(planes batch) -> logits` against the searcher's π, on the 8 symmetries of a
    training split; (train loss, held-out loss, held-out top-1 agreement with the searcher's most visited move)."""
    order = rng.permutation(len(pis))
    cut = max(1, int(len(pis) * val_fraction))
    val_x, val_pi = torch.from_numpy(planes[order[:cut]]), torch.from_numpy(pis[order[:cut]])
    train_x, train_pi = augment(planes[order[cut:]], pis[order[cut:]], planes.shape[-1])
    train_x, train_pi = torch.from_numpy(train_x), torch.from_numpy(train_pi)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(train_pi), size=batch_size))
        loss = -(train_pi[idx] * F.log_softmax(forward(train_x[idx]), dim=1)).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        logits = forward(val_x)
        val_loss = float(-(val_pi * F.log_softmax(logits, dim=1)).sum(dim=1).mean())
        agree = float((logits.argmax(1) == val_pi.argmax(1)).float().mean())
    return float(np.mean(losses[-max(1, steps // 5):])), val_loss, agree


# ----------------------------------------------------------------------------- (b) REINFORCE against a pool
@torch.no_grad()
def _sample_moves(net: ZeroNet, states, board_size: int, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    planes = np.stack([encode(s, board_size) for s in states])
    logits = net(torch.from_numpy(planes))[0].numpy().astype(np.float64)
    legal = np.stack([np.asarray(s.legal_actions_mask(), dtype=bool)[: logits.shape[1]] for s in states])
    legal &= ~own_eyes(states, board_size)[:, : logits.shape[1]]   # sensible moves only (the pass always is)
    gumbel = -np.log(-np.log(rng.random(logits.shape)))
    return [int(a) for a in np.argmax(np.where(legal, logits + gumbel, -np.inf), axis=1)], planes


def policy_gradient_games(game, learner: ZeroNet, opponent: ZeroNet, num_games: int, board_size: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """`num_games` games, colours alternated, both sides sampling from their policies: the learner's (planes,
    actions, game index) and the outcome z of each game for the learner."""
    states = [game.new_initial_state() for _ in range(num_games)]
    learner_colour = [i % 2 for i in range(num_games)]
    planes, actions, owner = [], [], []
    while True:
        live = [i for i, s in enumerate(states) if not s.is_terminal()]
        if not live:
            break
        for net in (learner, opponent):
            mine = [i for i in live if not states[i].is_terminal()
                    and (states[i].current_player() == learner_colour[i]) == (net is learner)]
            if not mine:
                continue
            moves, x = _sample_moves(net, [states[i] for i in mine], board_size, rng)
            if net is learner:
                planes.append(x)
                actions += moves
                owner += mine
            for i, a in zip(mine, moves):
                states[i].apply_action(a)
    z = np.array([s.returns()[c] for s, c in zip(states, learner_colour)], dtype=np.float32)
    return np.concatenate(planes), np.asarray(actions), np.asarray(owner), z


# ----------------------------------------------------------------------------- (c) value-network positions
@torch.no_grad()
def value_positions(game, sl: ZeroNet, rl: ZeroNet, num_games: int, board_size: int, max_random_move: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (planes, z) per game: U ~ uniform{0..max_random_move}; the SL policy plays moves 0..U-1, move U is
    uniformly random, the RL policy plays the rest (both sampled); the position after move U, its z from the view
    of the player to move there. A game over before then gives no example."""
    states = [game.new_initial_state() for _ in range(num_games)]
    u = rng.integers(0, max_random_move + 1, size=num_games)
    kept: dict[int, tuple[np.ndarray, int]] = {}
    while True:
        live = [i for i, s in enumerate(states) if not s.is_terminal()]
        if not live:
            break
        for i in live:
            if states[i].move_number() == u[i] + 1 and i not in kept:
                kept[i] = (encode(states[i], board_size), states[i].current_player())
        groups = {"sl": [i for i in live if states[i].move_number() < u[i]],
                  "random": [i for i in live if states[i].move_number() == u[i]],
                  "rl": [i for i in live if states[i].move_number() > u[i]]}
        for i in groups["random"]:
            states[i].apply_action(int(rng.choice(states[i].legal_actions())))
        for name, net in (("sl", sl), ("rl", rl)):
            if groups[name]:
                moves, _ = _sample_moves(net, [states[i] for i in groups[name]], board_size, rng)
                for i, a in zip(groups[name], moves):
                    states[i].apply_action(a)
    idx = sorted(kept)
    planes = np.stack([kept[i][0] for i in idx])
    z = np.array([states[i].returns()[kept[i][1]] for i in idx], dtype=np.float32)
    return planes, z


# ----------------------------------------------------------------------------- the runner
def train(cfg, ctx, *, expert_games: int, expert_simulations: int, sl_steps: int, rollout_steps: int,
          rl_iterations: int, rl_games: int, value_games: int, value_steps: int, batch_size: int = 256,
          expert_sample_moves: int = 3, c_puct: float = 1.5, sl_learning_rate: float = 1e-3,
          rollout_learning_rate: float = 1e-2, rl_learning_rate: float = 1e-4, pool_every: int = 5,
          value_learning_rate: float = 1e-3, max_random_move: int = 12, lam: float = 0.5, simulations: int = 32,
          val_games: int = 50, search_val_games: int = 20, threads: int = 1, workers: int = 2, **unknown) -> dict:
    check_args(train, unknown, expert_games=expert_games, expert_simulations=expert_simulations, sl_steps=sl_steps,
               rollout_steps=rollout_steps, rl_iterations=rl_iterations, rl_games=rl_games, value_games=value_games,
               value_steps=value_steps, batch_size=batch_size, pool_every=pool_every, simulations=simulations,
               val_games=val_games, search_val_games=search_val_games, workers=workers)
    from dlzoo.errors import ConfigError

    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"runner.lam (the rollout's weight in the leaf value) must lie in [0, 1], got {lam!r}")
    n = int(cfg.game.board_size)
    game = load_game(n, cfg.game.komi, cfg.game.supported_sizes)   # refuses an unsupported board size first
    nets: LeeNets = build(cfg.model, "model")
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if ctx.is_main and ctx.run_id is not None:
        from dlzoo.tracking import client

        client(ctx.tracking_uri).log_param(ctx.run_id, "hardware/torch_threads", threads)
        client(ctx.tracking_uri).log_param(ctx.run_id, "hardware/go_processes", workers)
    value_chunk = max(1, value_steps // 2)   # the value network's learning curve: two rows
    ctx.total_epochs = 2 + rl_iterations // pool_every + len(range(0, value_steps, value_chunk)) + 1
    start, epoch = time.perf_counter(), 0
    seconds = {}

    def vs_random(net) -> float:
        was_training = net.training
        played = play_match(game, NetPlayer(SensibleEvaluator(net, n)), RandomPlayer(), val_games, rng)   # sets eval()
        net.train(was_training)
        return float(np.mean([g.a_won for g in played]))

    def row(phase: int, **values) -> None:
        nonlocal epoch
        r = {"epoch": epoch, "phase": phase, "seconds": round(time.perf_counter() - start, 1), **values}
        ctx.log_metrics({k: v for k, v in r.items() if "/" in k}, step=epoch)
        ctx.end_epoch(r)
        epoch += 1

    # (a) searcher games -> the SL policy network and the rollout policy
    t0 = time.perf_counter()
    planes, pis, expert = searcher_games_parts(game, n, expert_games, expert_simulations, c_puct, expert_sample_moves,
                                               rng.integers(0, 2**63 - 1, size=workers), workers)
    row(1, **{"train/expert_positions": expert["positions"], "train/expert_black_win_rate": expert["black_win_rate"],
              "train/expert_positions_per_s": expert["positions"] / expert["seconds"]})
    nets.sl.train()
    sl_loss, sl_val, sl_agree = fit_policy(lambda x: nets.sl(x)[0], nets.sl.parameters(), planes, pis, sl_steps,
                                           batch_size, sl_learning_rate, rng)
    nets.sl.eval()
    nets.rollout.train()
    ro_loss, ro_val, ro_agree = fit_policy(lambda x: nets.rollout(torch.from_numpy(rollout_features(x.numpy()))),
                                           nets.rollout.parameters(), planes, pis, rollout_steps, batch_size,
                                           rollout_learning_rate, rng)
    nets.rollout.eval()
    sl_rate = vs_random(nets.sl)
    row(1, **{"train/sl_loss": sl_loss, "val/sl_loss": sl_val, "val/sl_move_agreement": sl_agree,
              "train/rollout_loss": ro_loss, "val/rollout_loss": ro_val, "val/rollout_move_agreement": ro_agree,
              "val/policy_win_rate_vs_random": sl_rate})
    seconds["supervised"] = time.perf_counter() - t0

    # (b) the RL policy: REINFORCE against a pool of its earlier versions (the SL policy first)
    t0 = time.perf_counter()
    nets.rl.load_state_dict(nets.sl.state_dict())
    nets.rl.train()
    pool = [copy.deepcopy(nets.rl).eval()]
    opt = torch.optim.Adam(nets.rl.parameters(), lr=rl_learning_rate)
    rl_rates, rl_losses = [], []
    best_rl = (sl_rate, 0, copy.deepcopy(nets.rl.state_dict()))   # (val win rate vs random, iteration, weights)
    for it in range(1, rl_iterations + 1):
        opponent = pool[int(rng.integers(len(pool)))]
        nets.rl.eval()   # batch-norm statistics frozen while playing and while learning (the SL ones)
        x, actions, owner, z = policy_gradient_games(game, nets.rl, opponent, rl_games, n, rng)
        advantage = torch.from_numpy(z[owner] - z.mean())
        logp = F.log_softmax(nets.rl(torch.from_numpy(x))[0], dim=1)[torch.arange(len(actions)), torch.from_numpy(actions)]
        loss = -(advantage * logp).sum() / rl_games
        opt.zero_grad()
        loss.backward()
        opt.step()
        rl_rates.append(float(np.mean(z > 0)))
        rl_losses.append(loss.item())
        if it % pool_every == 0:
            pool.append(copy.deepcopy(nets.rl).eval())
            rate = vs_random(nets.rl)
            if rate >= best_rl[0]:   # early stopping: plain REINFORCE can drift to a degenerate policy
                best_rl = (rate, it, copy.deepcopy(nets.rl.state_dict()))
            row(2, **{"train/rl_win_rate_vs_pool": float(np.mean(rl_rates)), "train/rl_loss": float(np.mean(rl_losses)),
                      "train/pool_size": len(pool), "val/policy_win_rate_vs_random": rate,
                      "val/rl_win_rate_vs_sl": _rl_vs_sl(game, nets, n, val_games, rng)})
            rl_rates, rl_losses = [], []
    nets.rl.load_state_dict(best_rl[2])
    nets.rl.eval()
    seconds["reinforce"] = time.perf_counter() - t0

    # (c) the value network on one position per RL self-play game
    t0 = time.perf_counter()
    nets.sl.eval()
    vplanes, vz = value_positions(game, nets.sl, nets.rl, value_games, n, max_random_move, rng)
    order = rng.permutation(len(vz))
    cut = max(1, len(vz) // 10)
    val_x, val_z = torch.from_numpy(vplanes[order[:cut]]), torch.from_numpy(vz[order[:cut]])
    train_x = augment(vplanes[order[cut:]], np.zeros((len(vz) - cut, n * n + 1), np.float32), n)[0]
    train_x, train_z = torch.from_numpy(train_x), torch.from_numpy(np.tile(vz[order[cut:]], 8))
    opt = torch.optim.Adam(nets.value.parameters(), lr=value_learning_rate, weight_decay=1e-4)
    chunk = value_chunk
    for done in range(0, value_steps, chunk):
        nets.value.train()
        losses = []
        for _ in range(min(chunk, value_steps - done)):
            idx = torch.from_numpy(rng.integers(0, len(train_z), size=batch_size))
            loss = F.mse_loss(nets.value(train_x[idx])[1], train_z[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        nets.value.eval()
        with torch.no_grad():
            val_mse = float(F.mse_loss(nets.value(val_x)[1], val_z))
        row(3, **{"train/value_loss": float(np.mean(losses)), "val/value_loss": val_mse,
                  "val/value_zero_guess_loss": float((val_z ** 2).mean()), "train/value_positions": len(vz)})
    seconds["value"] = time.perf_counter() - t0

    # (d) the player: search with SL priors and lambda-mixed leaves, against random
    t0 = time.perf_counter()
    nets.eval()
    lee = SearchPlayer(LeeEvaluator(nets, n, lam, rng), simulations, c_puct)
    played = play_match(game, lee, RandomPlayer(), search_val_games, rng)
    final_rate = vs_random(nets.rl)
    nets.eval()
    row(4, **{"val/search_win_rate_vs_random": float(np.mean([g.a_won for g in played])),
              "val/policy_win_rate_vs_random": final_rate})
    seconds["search_check"] = time.perf_counter() - t0
    ctx.save_checkpoint(nets.state_dict(), final_rate, board_size=n, lam=float(lam))
    example = torch.zeros(1, nets.sl.stem[0].in_channels, n, n)
    return {"checkpoint": str(ctx.checkpoint_path), "best_score": ctx.best_score, "board_size": n,
            "komi": float(cfg.game.komi), "expert": "rollout-PUCT searcher games (no human records)",
            "expert_games": expert_games, "expert_positions": expert["positions"],
            "expert_positions_per_s": expert["positions"] / expert["seconds"], "value_positions": int(len(vz)),
            "rl_pool_size": len(pool), "rl_kept_iteration": best_rl[1], **{f"seconds_{k}": round(v, 1) for k, v in seconds.items()},
            "model": nets, "example": example}


def _rl_vs_sl(game, nets: LeeNets, n: int, games: int, rng) -> float:
    """The RL policy against the SL policy, both sampling from their policies (as in the paper's 80% figure)."""
    *_, z = policy_gradient_games(game, nets.rl, nets.sl, games, n, rng)
    return float(np.mean(z > 0))
