// report.html's script (genlab.report.writers.write_html inlines it): click a header to sort
// by it (again to reverse). Numbers by value, empty cells last either way.
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], col = th.cellIndex;
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir > 0 ? "asc" : "desc";
  const key = tr => tr.cells[col].dataset.value;
  [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const nx = Number(x), ny = Number(y);
    return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
  }).forEach(tr => body.appendChild(tr));
}));
