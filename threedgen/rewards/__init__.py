"""Critics: frozen models that score renders against the prompt, used as differentiable rewards
(``threedgen/guidance/reward.py``): a Qwen2-VL-class VLM (VLM3D), CLIP, and the toy classifier."""
