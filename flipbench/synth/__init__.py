"""The bundled synthetic suite and the tiny model trained on it.

``world`` draws a made-up world (creatures, cities, rulers, elements, planets, crafts) from a seed; the four
task modules turn it into lm-eval documents shaped like MMLU, ARC, HellaSwag and GSM8k; ``generate`` writes
them under ``tasks/synth/``; ``corpus`` and ``train`` turn the train splits (never the test splits) into the
tiny Llama shipped in ``flipbench/assets/tiny/``.
"""
