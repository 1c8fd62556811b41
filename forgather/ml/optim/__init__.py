"""forgather.ml.optim"""
