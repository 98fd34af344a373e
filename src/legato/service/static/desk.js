// Legato desk pages: a light poll keeps the page current without a reload.
//
// The desk trades on its own bus, not on the service's /events stream, so each desk page
// re-reads itself every few seconds (data-poll-seconds) and swaps in its live region, which
// the server renders exactly as on a reload (charts included: they are inline SVG). An
// operator's control also refreshes the page at once instead of waiting for the next poll.
"use strict";
(function () {
  const region = document.querySelector("[data-desk-live]");
  if (!region) return;
  const seconds = Number(region.dataset.pollSeconds || "3");
  const token = () => sessionStorage.getItem("legato.apiToken") || "";
  let running = false;

  async function refresh() {
    // An open <details> (a decision's votes) would close on a swap: wait until it is shut.
    if (running || document.hidden || region.querySelector("details[open]")) return;
    running = true;
    try {
      const headers = token() ? { "Authorization": `Bearer ${token()}` } : {};
      const response = await fetch(location.pathname + location.search, { headers });
      if (!response.ok) return;
      const fresh = new DOMParser()
        .parseFromString(await response.text(), "text/html")
        .querySelector("[data-desk-live]");
      if (fresh) {
        region.replaceChildren(...fresh.childNodes);
        region.dispatchEvent(new CustomEvent("desk:refreshed", { bubbles: true }));
      }
    } catch (error) {
      // The service is away for a moment; the next poll tries again.
    } finally {
      running = false;
    }
  }

  setInterval(refresh, seconds * 1000);
  // After a control has answered (dashboard.js shows the flash), show its effect at once.
  new MutationObserver(() => {
    const flash = document.getElementById("flash");
    if (flash && !flash.hidden) setTimeout(refresh, 300);
  }).observe(document.getElementById("flash"), { attributes: true, childList: true });
})();
