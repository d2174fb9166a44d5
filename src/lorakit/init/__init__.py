"""The LoRA family's initialisations: PiSSA, OLoRA and LoftQ."""
