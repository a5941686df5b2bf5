"""relay/config.py and relay/pricing.py: settings, refusing to start, masking, prices."""
import pytest

from relay import config, pricing


def test_defaults_with_only_the_secret(tmp_path):
    c = config.load({"STRIPE_WEBHOOK_SECRET": "whsec_x"}, dotenv_path=None)
    assert (c["ARCADE_DB"], c["MQTT_URL"], c["ARCADE_TOPIC_PREFIX"], c["ARCADE_ACK_TIMEOUT"], c["STRIPE_API_KEY"]) \
        == ("./arcade.db", "mqtt://127.0.0.1:1883", "arcade", 10.0, None)


def test_dotenv_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("STRIPE_WEBHOOK_SECRET=whsec_file\nARCADE_DB=/from/file.db\nARCADE_ACK_TIMEOUT=3\n")
    c = config.load({"ARCADE_DB": "/from/env.db"}, dotenv_path=str(env_file))
    assert (c["STRIPE_WEBHOOK_SECRET"], c["ARCADE_DB"], c["ARCADE_ACK_TIMEOUT"]) == ("whsec_file", "/from/env.db", 3.0)
    assert config.db_path({}, dotenv_path=str(env_file)) == "/from/file.db"


def test_missing_webhook_secret_refuses_with_what_to_do():
    with pytest.raises(config.ConfigError) as e:
        config.load({}, dotenv_path=None)
    assert "STRIPE_WEBHOOK_SECRET" in str(e.value) and "whsec_" in str(e.value)
    assert config.load({}, dotenv_path=None, require_webhook_secret=False)["STRIPE_WEBHOOK_SECRET"] is None


@pytest.mark.parametrize("key, value, message", [
    ("ARCADE_ACK_TIMEOUT", "ten", "not a number"),
    ("ARCADE_ACK_TIMEOUT", "0", "positive"),
    ("MQTT_URL", "http://broker:1883", "mqtt://"),
    ("MQTT_URL", "mqtt://u:secretpw@host:notaport", "valid URL"),
    ("ARCADE_TOPIC_PREFIX", "arcade/#", "topic prefix"),
    ("ARCADE_RELAY_NAME", "r1/../x", "ARCADE_RELAY_NAME"),
    ("ARCADE_RELAY_NAME", "a" * 33, "1-32"),
    ("ARCADE_LEASE_SECONDS", "2", "at least 3"),
    ("MQTT_URL", "mqtt://u:secretpw@n1:1883,,mqtt://u:secretpw@n2:1883", "empty entry"),
    ("MQTT_URL", "mqtt://u:secretpw@n1:1883,mqtts://u:secretpw@n2:8883", "mixes"),
    ("MQTT_URL", "mqtt://u:secretpw@n1:1883,http://u:secretpw@n2", "mqtt://"),
    ("MQTT_URL", ",".join(["mqtt://u:secretpw@n:1883"] * 17), "at most 16"),
    ("ARCADE_MQTT_VERSION", "3", "3.1.1"),
])
def test_bad_values_are_named(key, value, message):
    with pytest.raises(config.ConfigError, match=message) as e:
        config.load({"STRIPE_WEBHOOK_SECRET": "whsec_x", key: value}, dotenv_path=None)
    assert "secretpw" not in str(e.value)


def test_mqtt_url_parsing_and_masking():
    assert config.parse_mqtt_url("mqtt://user:p%40ss@broker.example:1884") == {
        "host": "broker.example", "port": 1884, "username": "user", "password": "p@ss", "tls": False}
    assert config.parse_mqtt_url("mqtts://h")["port"] == 8883
    assert config.mask_url("mqtt://user:hunter2@host:1883") == "mqtt://user:***@host:1883"
    assert config.mask_url("mqtt://host:1883") == "mqtt://host:1883"


def test_several_brokers_in_mqtt_url():
    """A cluster's nodes, comma-separated: each parsed on its own; a one-shot tool takes the first."""
    url = "mqtt://r:p%2Cw@n1:4001, mqtt://r:pw2@n2:4002,mqtt://n3"
    targets = config.parse_mqtt_urls(url)
    assert [(t["host"], t["port"], t["password"]) for t in targets] == [("n1", 4001, "p,w"), ("n2", 4002, "pw2"),
                                                                        ("n3", 1883, None)]
    assert config.parse_mqtt_url(url) == targets[0]
    assert "pw2" not in config.mask_url(url) and "p%2Cw" not in config.mask_url(url)
    c = config.load({"STRIPE_WEBHOOK_SECRET": "whsec_x", "MQTT_URL": url, "ARCADE_MQTT_VERSION": "3.1.1"},
                    dotenv_path=None)
    assert (c["MQTT_URL"], c["ARCADE_MQTT_VERSION"]) == (url, "3.1.1")
    assert config.load({"STRIPE_WEBHOOK_SECRET": "whsec_x"}, dotenv_path=None)["ARCADE_MQTT_VERSION"] == "5"


CAB = {"currency": "usd", "price_cents": 100, "bundles": [(3, 250)], "coins_per_credit": 2}


@pytest.mark.parametrize("amount, currency, expected", [
    (100, "usd", (1, "")),
    (250, "usd", (3, "")),
    (300, "usd", (3, "")),
    (100, "USD", (1, "")),
    (150, "usd", (0, "amount_mismatch")),
    (0, "usd", (0, "amount_mismatch")),
    (-100, "usd", (0, "amount_mismatch")),
    (None, "usd", (0, "amount_mismatch")),
    (100, "eur", (0, "wrong_currency")),
    (100, None, (0, "wrong_currency")),
    (12800, "usd", (0, "too_many_pulses")),
])
def test_credits_come_from_the_amount(amount, currency, expected):
    assert pricing.credits_for(CAB, amount, currency) == expected


def test_offers_extend_the_table():
    assert pricing.credits_for(CAB, 400, "usd", offers=[(5, 400)]) == (5, "")


@pytest.mark.parametrize("text, currency, cents", [("1.00", "usd", 100), ("2.5", "usd", 250), ("3", "usd", 300),
                                                    ("100", "jpy", 100)])
def test_parse_price(text, currency, cents):
    assert pricing.parse_price(text, currency) == cents


@pytest.mark.parametrize("text, currency", [("1,00", "usd"), ("$1", "usd"), ("1.005", "usd"), ("0", "usd"),
                                            ("", "usd"), ("1.5", "jpy")])
def test_bad_price_says_what_is_accepted(text, currency):
    with pytest.raises(ValueError, match=repr(text).replace("$", r"\$")):
        pricing.parse_price(text, currency)


@pytest.mark.parametrize("text", ["3-2.50", "3:", ":2.50", "0:1.00", "x:1.00", "3:2,50"])
def test_bad_bundle(text):
    with pytest.raises(ValueError, match="bundle"):
        pricing.parse_bundle(text)
