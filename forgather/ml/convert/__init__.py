"""forgather.ml.convert"""
