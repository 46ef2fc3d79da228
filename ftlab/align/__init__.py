"""Aligning a language model with instructions and preferences, each step in one file.

* ``sft``: supervised fine-tuning on prompt/response pairs (loss on response tokens only), plus
  what the other steps share: tokenising, response log-probabilities, generation, the reference;
* ``reward``: a reward model trained on preference pairs (Bradley-Terry loss);
* ``rlhf``: PPO against the reward model with a KL penalty to the SFT model;
* ``dpo``: Direct Preference Optimization, the same goal without a reward model or sampling.
"""
