"""Reinforcement learning families (gymnasium classic control): each algorithm is one runner module read
top to bottom (reinforce.py, a2c.py, dqn.py, ppo.py), built on small shared pieces (envs.py: environments;
nets.py: the policy / value / Q networks; rollout.py: episodes, budgets and the training curve) and judged
by one evaluator (evaluate.py), through the pipeline's train and evaluate stages like every other family."""
