# Runs after boot.py. Everything lives in app.main(), which leaves the coin line idle.
import app

app.main()
