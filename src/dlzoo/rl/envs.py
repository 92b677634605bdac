"""Building gymnasium environments, with one-line errors for an environment id or action space a family cannot use."""

from __future__ import annotations

import os

from dlzoo.errors import ConfigError


def _gym():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # rgb_array rendering needs no display
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    import gymnasium

    return gymnasium


def make_env(env_id: str, render_mode: str | None = None):
    """`gymnasium.make(env_id)`, or a ConfigError naming the id (unknown name, version, or a missing extra)."""
    gym = _gym()
    try:
        return gym.make(env_id, render_mode=render_mode)
    except gym.error.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"unknown environment id {env_id!r}: {first}") from None


def make_vec_env(env_id: str, num_envs: int):
    """`num_envs` copies in one process; an episode that ends is reset in the same step, its last
    observation kept in info['final_obs'] (so a time-limit truncation can be bootstrapped)."""
    make_env(env_id).close()  # the same one-line error for an unknown id
    gym = _gym()
    from gymnasium.vector import AutoresetMode

    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})


def env_spaces(env_id: str, needs_discrete: str | None = None) -> tuple[int, int]:
    """(observation size, number of actions) of `env_id`. Families here need a flat Box observation and a
    Discrete action space; `needs_discrete` names the family in the error for any other space."""
    gym = _gym()
    env = make_env(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    who = needs_discrete or "this family"
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ConfigError(f"{who} needs a discrete action space, but {env_id} has {act_space}: "
                          f"pick a discrete environment (e.g. CartPole-v1, Acrobot-v1)")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(f"{who} needs a flat vector observation, but {env_id} has {obs_space}")
    return int(obs_space.shape[0]), int(act_space.n)
