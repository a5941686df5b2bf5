// Live state of one payment on /paid: poll the JSON twin of the page until it is final.
// Without JavaScript the page refreshes itself (<noscript><meta refresh>).
(function () {
  "use strict";
  var box = document.getElementById("state");
  if (!box || box.dataset.done) { return; }
  var url = box.dataset.statusUrl, delay = 1000, started = Date.now();

  function show(v) {
    box.className = "card tone-" + v.tone;
    box.dataset.state = v.state;
    document.getElementById("title").textContent = v.title;
    document.getElementById("message").textContent = v.message;
    var steps = document.getElementById("steps").children;
    for (var i = 0; i < steps.length; i++) {
      steps[i].className = v.step >= i + 1 ? "done" : "";
    }
  }

  function poll() {
    fetch(url, {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (v) {
        if (v && v.state) { show(v); if (v.done) { box.dataset.done = "1"; return; } }
        schedule();
      })
      .catch(schedule);
  }

  function schedule() {
    // Every second for the first half minute, then every 5 s: a slow cabinet can take a while.
    if (Date.now() - started > 30000) { delay = 5000; }
    setTimeout(poll, delay);
  }

  schedule();
}());
