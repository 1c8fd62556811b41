"""The embedded corpora (data files) and the script that builds them."""
