"""RSTPM (Yamada & Hotta, 2021): STPM plus a reconstruction student with attention."""
