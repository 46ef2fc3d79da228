"""Aligning a language model with instructions and preferences, each step in one file.

* ``sft``: supervised fine-tuning on prompt/response pairs (loss on response tokens only);
* ``reward``: a reward model trained on preference pairs (Bradley-Terry loss);
* ``rlhf``: PPO against the reward model with a KL penalty to the SFT model;
* ``dpo``: Direct Preference Optimization, the same goal without a reward model or sampling;

and what they share:

* ``common``: the chat template, tokenising and batching, response log-probabilities, the
  frozen reference model;
* ``generate``: greedy and sampled generation;
* ``cache``: the SFT and reward models that later notebooks reuse, shipped in ``data/``,
  cached, or trained.
"""
