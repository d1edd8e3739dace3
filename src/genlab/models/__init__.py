"""LightningModules, one per model family; variants are options, not subclasses."""
