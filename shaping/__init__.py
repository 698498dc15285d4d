"""Credit assignment: spread a sequence reward over tokens (pure torch + shap/lime adapters).

Never imports optuna, ray, sqlalchemy or fastapi (import-linter enforces it).
"""
