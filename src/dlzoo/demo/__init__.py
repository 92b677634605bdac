"""The playground: a Gradio page over the registry's champions (`make demo`, http://127.0.0.1:7860).

It reads `models:/<task>@champion` and the artifacts of the runs behind them, and never trains or writes to the
store. The model side of each tab is a plain module (vision, go_play, audio, answers) that tests call without Gradio.
"""
