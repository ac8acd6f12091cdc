// Applies a saved theme before the first paint (a classic script, so it runs before the page
// renders; the ES modules load deferred). Without a saved choice the CSS follows
// prefers-color-scheme.
try {
  var saved = localStorage.getItem('switchboard.theme');
  if (saved === 'light' || saved === 'dark') document.documentElement.dataset.theme = saved;
} catch (e) { /* storage disabled: follow the system */ }
