"""samplescope engines: models, rewards, samplers and the trace they speak.

Nothing here imports ``app`` or ``storage``.
"""
