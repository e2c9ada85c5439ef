"""The engines behind `vv` verbs that are not nodes: cleanup, export, the supervisor of `vv up`,
status, replay, demo, model export and quantization (the verbs themselves: nodes/cli/)."""
