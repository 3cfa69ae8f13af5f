/* itonami web UI: the little behaviour the server-rendered pages need.
   No build step and no dependency. Every page works without it; with it:
   - [data-live-src][data-live-stream]: re-fetch the fragment when the
     server-sent event stream reports a change;
   - form[data-ajax]: submit with fetch, show the answer in data-target;
   - button[data-load]: fetch a fragment into data-target;
   - input[data-travel]: the time-travel slider loads the state at a version. */
(function () {
  "use strict";

  function swap(target, html) {
    var el = typeof target === "string" ? document.querySelector(target) : target;
    if (el) el.innerHTML = html;
  }

  function load(url, target) {
    return fetch(url, { headers: { "X-Requested-With": "itonami" } }).then(function (r) {
      return r.text().then(function (t) { swap(target, t); return r.ok; });
    });
  }

  var refreshing = new WeakMap();
  function refresh(el) {
    if (refreshing.get(el)) { refreshing.set(el, "again"); return; }
    refreshing.set(el, true);
    // keep open <details> open across a refresh
    var open = Array.prototype.map.call(el.querySelectorAll("details[open]"), function (d) {
      return d.parentElement && d.parentElement.dataset.version;
    });
    load(el.dataset.liveSrc, el).then(function () {
      open.forEach(function (v) {
        if (!v) return;
        var d = el.querySelector('[data-version="' + v + '"] > details');
        if (d) d.open = true;
      });
    }).finally(function () {
      var again = refreshing.get(el) === "again";
      refreshing.set(el, false);
      if (again) refresh(el);
    });
  }

  // A running execution gains versions: the time-travel slider follows.
  function growSlider(data) {
    var slider = document.querySelector("input[data-travel]");
    var version;
    try { version = JSON.parse(data).version; } catch (e) { return; }
    if (!slider || typeof version !== "number" || version <= Number(slider.max)) return;
    var atEnd = slider.value === slider.max;
    slider.max = String(version);
    if (atEnd) slider.value = slider.max;
    var label = document.querySelector('output[for="' + slider.id + '"]');
    if (label) label.textContent = "version " + slider.value + " / " + slider.max;
  }

  function liveRegions() {
    var streams = {};
    document.querySelectorAll("[data-live-src][data-live-stream]").forEach(function (el) {
      var url = el.dataset.liveStream;
      (streams[url] = streams[url] || []).push(el);
    });
    Object.keys(streams).forEach(function (url) {
      if (!window.EventSource) return;
      var source = new EventSource(url);
      var seen = null;
      function onEvent(ev) {
        if (seen !== null && ev.data !== seen) streams[url].forEach(refresh);
        if (ev.type === "execution") growSlider(ev.data);
        seen = ev.data;
        document.documentElement.dataset.live = "on";
      }
      source.addEventListener("change", onEvent);
      source.addEventListener("execution", onEvent);
    });
  }

  function ajaxForms() {
    document.querySelectorAll("form[data-ajax]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var button = form.querySelector("button[type=submit]");
        if (button) button.disabled = true;
        fetch(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)) })
          .then(function (r) { return r.text(); })
          .then(function (t) { swap(form.dataset.target, t); })
          .catch(function (e) { swap(form.dataset.target, '<p class="result result-err">' + String(e).replace(/[<>&]/g, "") + "</p>"); })
          .finally(function () { if (button) button.disabled = false; });
      });
    });
  }

  function loaders() {
    document.querySelectorAll("button[data-load]").forEach(function (b) {
      b.addEventListener("click", function () {
        b.disabled = true;
        swap(b.dataset.target, '<p class="muted">working…</p>');
        load(b.dataset.load, b.dataset.target).finally(function () { b.disabled = false; });
      });
    });
  }

  function travel() {
    document.querySelectorAll("input[data-travel]").forEach(function (slider) {
      var label = document.querySelector('output[for="' + slider.id + '"]');
      var timer = null;
      var wanted = null;
      function go() {
        var v = slider.value;
        if (v === wanted) return;
        wanted = v;
        var sep = slider.dataset.travel.indexOf("?") < 0 ? "?" : "&";
        load(slider.dataset.travel + sep + "version=" + encodeURIComponent(v), slider.dataset.target);
      }
      slider.addEventListener("input", function () {
        if (label) label.textContent = "version " + slider.value + " / " + slider.max;
        clearTimeout(timer);
        timer = setTimeout(go, 120);
      });
      slider.addEventListener("change", function () { clearTimeout(timer); go(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    liveRegions();
    ajaxForms();
    loaders();
    travel();
  });
})();
