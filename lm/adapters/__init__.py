"""Parameter-efficient fine-tuning: LoRA adapters (``lora.py``), 4-bit NF4 base layers
(``nf4.py``) and the config glue that applies them (``build.py``)."""
