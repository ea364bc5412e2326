// Stacked rows on narrow screens: every table with three or more columns gets the
// class "stack-narrow", and each of its cells a copy of its column's header, which
// site.css shows above the cell only on a narrow screen.
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("article table")) {
    const head = table.querySelector("thead tr");
    if (!head || head.cells.length < 3) continue;
    table.classList.add("stack-narrow");
    for (const row of table.querySelectorAll("tbody tr")) {
      Array.from(row.cells).forEach((cell, i) => {
        const header = head.cells[i];
        if (!header || !header.textContent.trim()) return;
        const label = document.createElement("span");
        label.className = "stack-label";
        label.setAttribute("aria-hidden", "true");
        label.innerHTML = header.innerHTML;
        cell.prepend(label);
      });
    }
  }
});
