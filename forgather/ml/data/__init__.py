"""forgather.ml.data"""
