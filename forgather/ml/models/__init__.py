"""forgather.ml.models"""
