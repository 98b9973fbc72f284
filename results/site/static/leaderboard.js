/* cleanbench leaderboard: sort tables by a header click, filter rows by field and selects, and keep
   the sort and filter state in the URL (#attack=badnet&sort=asr&dir=ascending&q=...). No dependencies. */
(function () {
  "use strict";

  var FIELDS = ["attack", "defense", "rate", "setting", "status", "seed", "role"];

  function sortKey(row, index) {
    var cell = row.cells[index];
    var value = cell ? cell.getAttribute("data-v") : null;
    return value === null || value === "" ? null : value;
  }

  function sortBy(table, th, direction) {
    var index = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", direction);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a, index);
      var y = sortKey(b, index);
      if (x === null || y === null) {
        return (x === null) - (y === null); /* missing values last, whatever the direction */
      }
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return direction === "ascending" ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  /* A search term: "field:value" matches that field of the row (substring), a plain word matches
     the row's attack, defense, poison rate or setting; never the numbers. */
  function matches(row, term) {
    var colon = term.indexOf(":");
    if (colon > 0 && FIELDS.indexOf(term.slice(0, colon)) !== -1) {
      var value = (row.getAttribute("data-" + term.slice(0, colon)) || "").toLowerCase();
      var wanted = term.slice(colon + 1);
      return term.slice(0, colon) === "seed" ? (" " + value + " ").indexOf(" " + wanted + " ") !== -1 : value.indexOf(wanted) !== -1;
    }
    return ["attack", "defense", "rate", "setting"].some(function (field) {
      return (row.getAttribute("data-" + field) || "").toLowerCase().indexOf(term) !== -1;
    });
  }

  function applyFilters(form, table) {
    var terms = form.querySelector("#filter-text").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    var selects = form.querySelectorAll("select[data-filter]");
    var shown = 0;
    var rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var visible = terms.every(function (term) { return matches(row, term); });
      Array.prototype.forEach.call(selects, function (select) {
        var wanted = select.value;
        if (wanted !== "" && row.getAttribute("data-" + select.getAttribute("data-filter")) !== wanted) {
          visible = false;
        }
      });
      row.hidden = !visible;
      if (visible) { shown += 1; }
    });
    var output = form.querySelector("#shown");
    if (output) { output.textContent = shown + " of " + rows.length + " rows shown"; }
  }

  function readState() {
    var hash = window.location.hash.slice(1);
    if (hash === "" || hash.indexOf("=") === -1) { return null; } /* empty, or a row anchor */
    var state = {};
    hash.split("&").forEach(function (part) {
      var pair = part.split("=");
      if (pair.length === 2) { state[decodeURIComponent(pair[0])] = decodeURIComponent(pair[1]); }
    });
    return state;
  }

  function writeState(form, table) {
    var parts = [];
    var text = form.querySelector("#filter-text").value.trim();
    if (text) { parts.push("q=" + encodeURIComponent(text)); }
    Array.prototype.forEach.call(form.querySelectorAll("select[data-filter]"), function (select) {
      if (select.value) { parts.push(encodeURIComponent(select.getAttribute("data-filter")) + "=" + encodeURIComponent(select.value)); }
    });
    var sorted = table.tHead.querySelector("th[aria-sort]");
    if (sorted) {
      parts.push("sort=" + encodeURIComponent(sorted.getAttribute("data-col")));
      parts.push("dir=" + sorted.getAttribute("aria-sort"));
    }
    var hash = parts.length ? "#" + parts.join("&") : "";
    if (hash !== window.location.hash && !(hash === "" && readState() === null)) {
      window.history.replaceState(null, "", hash || window.location.pathname);
    }
  }

  function restore(form, table, state) {
    form.querySelector("#filter-text").value = state.q || "";
    Array.prototype.forEach.call(form.querySelectorAll("select[data-filter]"), function (select) {
      var wanted = state[select.getAttribute("data-filter")];
      if (wanted !== undefined && Array.prototype.some.call(select.options, function (o) { return o.value === wanted; })) {
        select.value = wanted;
      }
    });
    var th = state.sort ? table.tHead.querySelector("th[data-col='" + state.sort.replace(/[^a-z_]/g, "") + "']") : null;
    if (th) { sortBy(table, th, state.dir === "descending" ? "descending" : "ascending"); }
  }

  function init() {
    var form = document.getElementById("filters");
    var main = document.getElementById("leaderboard");
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        var button = th.querySelector("button");
        if (button) {
          button.addEventListener("click", function () {
            sortBy(table, th, th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending");
            if (form && table === main) { writeState(form, main); }
          });
        }
      });
    });
    if (form && main) {
      var state = readState();
      if (state) { restore(form, main, state); }
      var update = function () { applyFilters(form, main); writeState(form, main); };
      form.addEventListener("input", update);
      form.addEventListener("change", update);
      form.addEventListener("submit", function (event) { event.preventDefault(); });
      applyFilters(form, main);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
