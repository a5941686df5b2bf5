# Runs after boot.py. Skipped in safe mode; an uncaught exception is logged to crash.log and the
# board resets. app.main() leaves the coin line idle whatever happens.
import safemode

safemode.run()
