"""AlphaGo Zero on small-board Go (issue 12), read top to bottom:

- `game`: the OpenSpiel rules engine, the board planes the network sees, the 8 board symmetries;
- `net`: the residual tower with a policy head and a value head;
- `mcts`: PUCT search over many games at once, their leaves evaluated in one network batch;
- `players`: random, network-alone, network-with-search and OpenSpiel's rollout MCTS, and lock-step matches;
- `parallel`: self-play games and match pairings in forked processes, one per core, each part from its own seed;
- `selfplay`: (state, search policy π, outcome z) from self-play games, augmented by symmetry;
- `zero`: the runner: generations of self-play -> training on a replay window -> gating arena;
- `evaluate`: the evaluator: win rates with Wilson intervals, Elo ladder, SGF and board images.
"""
