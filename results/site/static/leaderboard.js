/* cleanbench leaderboard: sort tables by a header click, filter rows by text and selects. No dependencies. */
(function () {
  "use strict";

  function sortKey(row, index) {
    var cell = row.cells[index];
    var value = cell ? cell.getAttribute("data-v") : null;
    return value === null || value === "" ? null : value;
  }

  function sortBy(table, th) {
    var index = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    var direction = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
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

  function applyFilters(form, table) {
    var text = form.querySelector("#filter-text").value.trim().toLowerCase();
    var selects = form.querySelectorAll("select[data-filter]");
    var shown = 0;
    var rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var visible = text === "" || row.textContent.toLowerCase().indexOf(text) !== -1;
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

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        var button = th.querySelector("button");
        if (button) {
          button.addEventListener("click", function () { sortBy(table, th); });
        }
      });
    });
    var form = document.getElementById("filters");
    var table = document.getElementById("leaderboard");
    if (form && table) {
      form.addEventListener("input", function () { applyFilters(form, table); });
      form.addEventListener("change", function () { applyFilters(form, table); });
      form.addEventListener("submit", function (event) { event.preventDefault(); });
      applyFilters(form, table);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
}());
