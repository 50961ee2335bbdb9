"""DMDD: Dual-Modeling Decouple Distillation (Liu, Wang, Leng and Zhang, ACM MM 2024)."""
