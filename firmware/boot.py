# First thing at power-on: drive the coin line to its idle level (from board.json).
try:
    import config
    from coin import Coin
    _b = config.load_board()
    Coin(_b["coin_pin"], _b["active"] == "high", _b["width_ms"], _b["gap_ms"])
except Exception as e:  # never stop the board from reaching the REPL
    print("boot: coin line not set:", e)
