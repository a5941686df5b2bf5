-- A relay database made by schema version 1 (the release before named migrations), with rows in
-- every table: tests/test_migrations.py upgrades it.
BEGIN TRANSACTION;
CREATE TABLE cabinet_config (
        cabinet_id       TEXT PRIMARY KEY,
        pulse_ms         INTEGER NOT NULL DEFAULT 0,
        gap_ms           INTEGER NOT NULL DEFAULT 0,
        coins_per_credit INTEGER NOT NULL DEFAULT 1,
        ver              INTEGER NOT NULL DEFAULT 0,
        ts               INTEGER NOT NULL DEFAULT 0,
        published_ver    INTEGER NOT NULL DEFAULT 0,
        test_n           INTEGER NOT NULL DEFAULT 0,
        board            TEXT,
        updated_at       REAL NOT NULL
    );
INSERT INTO "cabinet_config" VALUES('cab1',120,0,2,1795993552,1795993552,0,0,NULL,1.7959935522642431259e+09);
CREATE TABLE cabinets (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    secret           TEXT NOT NULL,
    enabled          INTEGER NOT NULL DEFAULT 1,
    currency         TEXT NOT NULL,
    price_cents      INTEGER NOT NULL,
    bundles          TEXT NOT NULL DEFAULT '[]',
    coins_per_credit INTEGER NOT NULL DEFAULT 1,
    next_seq         INTEGER NOT NULL DEFAULT 1,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    online           INTEGER NOT NULL DEFAULT 0,
    last_seen        REAL,
    status           TEXT,
    created_at       REAL NOT NULL
);
INSERT INTO "cabinets" VALUES('cab1','Galaga','e4b4ba92e931c7dd53fe2839e1aaab2006b043bee52659b69a2980fcd89a50ec',1,'usd',100,'[[3, 250]]',2,3,1,1,1.79599355226207137107e+09,'"{\"online\":true}"',1.79599355225856566423e+09);
INSERT INTO "cabinets" VALUES('cab2','Pac-Man','aaba5bdd4474408e1d6433ec09019d2be3ec9a951f31a198636495467dab9c27',1,'eur',50,'[]',1,1,0,0,NULL,NULL,1.79599355225911569595e+09);
CREATE TABLE checkouts (
        session_id      TEXT PRIMARY KEY,
        cabinet_id      TEXT NOT NULL,
        option_key      TEXT NOT NULL,
        credits         INTEGER NOT NULL,
        amount          INTEGER NOT NULL,
        currency        TEXT NOT NULL,
        promo_id        INTEGER,
        client_key      TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
INSERT INTO "checkouts" VALUES('cs_test_queued','cab1','1',1,100,'usd',NULL,'client-a','idem-1',1.79599355226252317425e+09);
CREATE TABLE events (
    event_id    TEXT PRIMARY KEY,
    session_id  TEXT,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    received_at REAL NOT NULL
);
INSERT INTO "events" VALUES('evt_1','cs_test_applied','checkout.session.completed','queued',1.79599355225949859618e+09);
INSERT INTO "events" VALUES('evt_2','cs_test_queued','checkout.session.completed','queued',1.79599355226015281678e+09);
INSERT INTO "events" VALUES('evt_3','cs_test_invalid','checkout.session.completed','invalid',1795993552.26061);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO "meta" VALUES('ledger_id','95ace18dde3cb805703b5a2b347dd376');
INSERT INTO "meta" VALUES('schema_version','1');
INSERT INTO "meta" VALUES('created_at','1795993552.2556152');
CREATE TABLE payment_links (
        link_id    TEXT PRIMARY KEY,
        cabinet_id TEXT NOT NULL,
        url        TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
INSERT INTO "payment_links" VALUES('plink_1AbC','cab2','https://buy.stripe.com/test',1.79599355226379108429e+09);
CREATE TABLE payments (
    session_id   TEXT PRIMARY KEY,
    cabinet_id   TEXT,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    credits      INTEGER NOT NULL DEFAULT 0,
    pulses       INTEGER NOT NULL DEFAULT 0,
    amount       INTEGER,
    currency     TEXT,
    seq          INTEGER,
    issued_ts    INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    ack_pulses   INTEGER,
    ack_last     INTEGER,
    event_type   TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    paid_at      REAL,
    queued_at    REAL,
    sent_at      REAL,
    done_at      REAL
);
INSERT INTO "payments" VALUES('cs_test_applied','cab1','applied','',3,6,250,'usd',1,1795993552,1,6,1,'checkout.session.completed',1.79599355225949859618e+09,1.79599355226153922079e+09,1.79599355225949859618e+09,1.79599355225949859618e+09,1.7959935522611186504e+09,1.79599355226153922079e+09);
INSERT INTO "payments" VALUES('cs_test_queued','cab1','queued','',1,2,100,'usd',2,1795993552,0,NULL,NULL,'checkout.session.completed',1.79599355226015281678e+09,1.79599355226015281678e+09,1.79599355226015281678e+09,1.79599355226015281678e+09,NULL,NULL);
INSERT INTO "payments" VALUES('cs_test_invalid','nope','invalid','unknown cabinet',0,0,100,'usd',NULL,NULL,0,NULL,NULL,'checkout.session.completed',1795993552.26061,1795993552.26061,NULL,NULL,NULL,1795993552.26061);
CREATE TABLE promotions (
        id         INTEGER PRIMARY KEY,
        cabinet_id TEXT,
        kind       TEXT NOT NULL,
        value      INTEGER NOT NULL,
        days       TEXT NOT NULL,
        start_min  INTEGER NOT NULL,
        end_min    INTEGER NOT NULL,
        label      TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
INSERT INTO "promotions" VALUES(1,'cab1','bonus',1,'0,1',600,720,'happy hour',1.79599355226309370997e+09);
CREATE UNIQUE INDEX payments_cabinet_seq ON payments (cabinet_id, seq);
CREATE INDEX payments_pending ON payments (cabinet_id, seq) WHERE state IN ('queued', 'sent');
CREATE INDEX payments_created ON payments (created_at);
CREATE INDEX checkouts_rate ON checkouts (cabinet_id, created_at);
COMMIT;
