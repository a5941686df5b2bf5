// The demo page: polls /demo/state, flashes each cabinet's coin lamp once per pulse, drives the buttons.
(function () {
  "use strict";
  var POLL_MS = 250, ON_MS = 140, OFF_MS = 110;
  var lamps = {};       // cabinet id -> {shown, target, busy, cpc}

  function $(id) { return document.getElementById(id); }

  function say(text, bad) {
    var m = $("message");
    m.textContent = text;
    m.className = "message" + (bad ? " bad" : "");
  }

  function badge(id, text, tone) {
    var el = $(id);
    if (!el) { return; }
    el.textContent = text;
    el.className = "badge " + tone;
  }

  // One flash per coin pulse, at a pace the eye can follow; the counters move with the flashes.
  function flash(id) {
    var l = lamps[id];
    if (l.busy || l.shown >= l.target) { return; }
    l.busy = true;
    var lamp = $("lamp-" + id);
    lamp.classList.add("on");
    setTimeout(function () {
      lamp.classList.remove("on");
      l.shown += 1;
      $("coins-" + id).textContent = l.shown;
      $("credits-" + id).textContent = Math.floor(l.shown / l.cpc);
      setTimeout(function () { l.busy = false; flash(id); }, OFF_MS);
    }, ON_MS);
  }

  function showCabinet(c) {
    var l = lamps[c.id];
    if (!l) {   // the page opened late: count what came before without replaying it
      l = lamps[c.id] = {shown: c.coins, target: c.coins, busy: false, cpc: c.coins_per_credit};
      $("coins-" + c.id).textContent = c.coins;
      $("credits-" + c.id).textContent = c.credits;
    }
    l.target = Math.max(l.target, c.coins);
    flash(c.id);
    $("lamp-" + c.id).setAttribute("data-coins", c.coins);
    var link = !c.powered ? ["power off", "bad"] : !c.plugged ? ["network unplugged", "bad"] :
      c.link === "connected" ? ["connected to the broker", "ok"] : ["reconnecting…", "warn"];
    badge("link-" + c.id, link[0], link[1]);
    badge("relay-" + c.id, c.relay_online ? "online at the relay" : "offline at the relay",
          c.relay_online ? "ok" : "bad");
    badge("coinstate-" + c.id, c.blocked ? (c.inhibited ? "coins blocked" : "blocking coins…") :
          (c.held ? "credit waiting in flash" : "accepting coins"), c.blocked || c.held ? "warn" : "ok");
    $("cab-" + c.id).setAttribute("data-link", c.link);
    $("cab-" + c.id).setAttribute("data-relay-online", c.relay_online ? "yes" : "no");
    $("unplug-" + c.id).hidden = !c.plugged;
    $("plug-" + c.id).hidden = c.plugged;
    $("power-cut-" + c.id).hidden = !c.powered;
    $("power-on-" + c.id).hidden = c.powered;
    $("block-" + c.id).hidden = c.blocked;
    $("unblock-" + c.id).hidden = !c.blocked;
    var ev = $("events-" + c.id);
    ev.textContent = "";
    c.events.slice().reverse().forEach(function (t) {
      var li = document.createElement("li");
      li.textContent = t;
      ev.appendChild(li);
    });
  }

  function showPayments(rows) {
    var body = document.querySelector("#payments tbody");
    body.textContent = "";
    rows.forEach(function (p) {
      var tr = document.createElement("tr");
      tr.className = "state-" + p.state;
      [p.ref, p.cabinet, p.amount, String(p.credits), p.state + (p.reason ? " (" + p.reason + ")" : "")]
        .forEach(function (v) {
          var td = document.createElement("td");
          td.textContent = v;
          tr.appendChild(td);
        });
      body.appendChild(tr);
    });
  }

  function showCards(rows) {
    var ul = $("cards");
    ul.textContent = "";
    rows.forEach(function (a) {
      var li = document.createElement("li");
      li.textContent = a.time + "  card \u2022\u2022\u2022\u2022 " + a.last4 + ": " + a.outcome.replace(/_/g, " ") +
        "  (session \u2026" + a.session + ")";
      ul.appendChild(li);
    });
  }

  function poll() {
    fetch("/demo/state", {cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (s) {
      s.cabinets.forEach(showCabinet);
      showPayments(s.payments);
      showCards(s.cards);
      $("broker").textContent = s.broker;
      $("relay").textContent = s.relay;
      $("live").textContent = "live";
      $("live").className = "live ok";
      setTimeout(poll, POLL_MS);
    }).catch(function () {
      $("live").textContent = "demo not answering (stopped?)";
      $("live").className = "live bad";
      setTimeout(poll, 2000);
    });
  }

  function post(url, button) {
    button.disabled = true;
    fetch(url, {method: "POST", headers: {"X-Demo-Control": "1"}}).then(function (r) {
      return r.json();
    }).then(function (j) {
      say(j.message, !j.ok);
    }).catch(function (e) {
      say("the demo did not answer: " + e, true);
    }).then(function () { button.disabled = false; });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll(".cab button[data-act]"), function (b) {
      var cab = b.closest(".cab").getAttribute("data-cab");
      b.addEventListener("click", function () {
        post("/demo/cabinet/" + cab + "/" + b.getAttribute("data-act"), b);
      });
    });
    $("restart-broker").addEventListener("click", function () { post("/demo/broker/restart", this); });
    poll();
  });
}());
