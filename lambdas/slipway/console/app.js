// Slipway console: a page per hash route, each made of the API's own answers.
//
//   #/                               the environment's apps
//   #/apps/APP                       status and instances, releases, recent deploys; rollback, cycle
//   #/apps/APP/releases/RELEASE      one release, and the form that deploys it with a strategy
//   #/apps/APP/rollback              the release a rollback deploys, and the same form
//   #/apps/APP/deploys/DEPLOY        a rollout's progress, batch by batch, live until it ends
//   #/apps/APP/cycles/REFRESH        an instance refresh's progress, live until it ends
//
// Every call goes to this origin with the browser's Basic credentials. Text from the API is
// put in the page as text (textContent), never as markup.
"use strict";

const ENV = document.body.dataset.env;
const POLL_MS = { deploy: 1500, cycle: 3000, status: 5000 };
const FINISHED = new Set(["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "Successful", "Failed", "Cancelled",
  "RollbackSuccessful", "RollbackFailed"]);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    // Changes go as JSON: the API refuses anything else (no other site's page can send it).
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.message) || `${response.status} ${response.statusText}`);
  }
  return data;
}

const appPath = (app, ...rest) =>
  [`apps/${encodeURIComponent(app)}/envs/${encodeURIComponent(ENV)}`, ...rest.map(encodeURIComponent)].join("/");

// DOM --------------------------------------------------------------------------------------------

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const link = (href, ...children) => h("a", { href }, ...children);
const badge = (text, kind) => h("span", { class: `badge ${kind || ""}` }, text);
const facts = (pairs) =>
  h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
// A heading is its text, or [text, class] ("hide-narrow": a column phones leave out, cells included).
const table = (headings, rows, empty) =>
  rows.length
    ? h("div", { class: "table" }, h("table", {},
        h("thead", {}, h("tr", {}, headings.map((t) => (Array.isArray(t) ? h("th", { class: t[1] }, t[0]) : h("th", {}, t))))),
        h("tbody", {}, rows)))
    : h("p", { class: "muted" }, empty);

function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  const seconds = Math.round((moment.getTime() - Date.now()) / 1000);
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const [unit, size] = units.find(([, size]) => Math.abs(seconds) >= size) || ["second", 1];
  const words = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }).format(Math.round(seconds / size), unit);
  return h("time", { datetime: iso, title: moment.toLocaleString() }, words);
}

function stateBadge(state) {
  const kind = {
    SUCCEEDED: "ok", Successful: "ok", InService: "ok", healthy: "ok", Healthy: "ok", done: "ok",
    RUNNING: "warn", InProgress: "warn", Pending: "warn", current: "warn", initial: "warn", draining: "warn",
    FAILED: "bad", TIMED_OUT: "bad", ABORTED: "bad", Failed: "bad", unhealthy: "bad", Unhealthy: "bad",
    RollbackFailed: "bad", Cancelled: "bad",
  }[state];
  return badge(state, kind);
}

function notice(text, kind) {
  const box = document.getElementById("notice");
  box.className = kind || "";
  box.textContent = text || "";
}

function render(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children.flat());
  main.querySelector("h1")?.focus?.();
}

// A route's timers stop when another route is shown.
let generation = 0;
function every(ms, refresh) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    let again = true;
    try {
      again = await refresh();
    } catch (error) {
      notice(`${error.message} (retrying)`, "bad");
    }
    if (again !== false && mine === generation) setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
}

// A button that runs `action` once at a time, after `question` is confirmed.
function actionButton(text, { question, kind, action }) {
  const button = h("button", { type: "button", class: kind || "" }, text);
  button.addEventListener("click", async () => {
    if (question && !window.confirm(question)) return;
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      notice(error.message, "bad");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// Pages ------------------------------------------------------------------------------------------

async function appsPage() {
  const listing = await api("GET", "apps");
  document.title = `Slipway · ${listing.env}`;
  const cards = listing.apps.map((app) =>
    h("section", { class: "card", "data-app": app.name },
      h("h2", {}, link(`#/apps/${app.name}`, app.name)),
      facts([
        ["Release", app.current ? badge(app.current, "current") : h("span", { class: "muted" }, "none deployed")],
        ["Instances", app.instances ? `${app.instances.in_service} of ${app.instances.desired} in service` : "no fleet"],
        ["URL", app.url ? h("a", { href: app.url, rel: "noopener noreferrer", target: "_blank" }, app.url) : "—"],
      ])));
  render(
    h("h1", { tabindex: "-1" }, `Apps in ${listing.env}`),
    cards.length ? h("div", { class: "cards" }, cards) : h("p", { class: "muted" }, "No apps: add one to cdk.json and deploy the stack."),
  );
}

function instanceRows(app, status) {
  return status.instances.map((instance) =>
    h("tr", { "data-instance": instance.id },
      h("td", { class: "mono" }, instance.id),
      h("td", { class: "hide-narrow" }, instance.zone),
      h("td", {}, stateBadge(instance.lifecycle), " ", stateBadge(instance.health)),
      h("td", {}, stateBadge(instance.target)),
      h("td", {}, instance.release || h("span", { class: "muted", title: "booted since the last rollout: runs the release current at its boot" }, "at boot")),
      h("td", {}, actionButton("Cycle", {
        question: `Replace ${instance.id}? The group launches a new instance at once; this one is terminated.`,
        action: async () => {
          await api("POST", appPath(app, "cycle"), { instance: instance.id });
          notice(`${instance.id} is being replaced.`, "ok");
        },
      }))));
}

function configChanges(release) {
  const changes = release.config_changes;
  if (!changes) return "";
  const words = [];
  if (changes.set && changes.set.length) words.push(h("span", { title: "set" }, "+", changes.set.join(", +")));
  if (changes.unset && changes.unset.length) words.push(h("span", { title: "unset" }, "−", changes.unset.join(", −")));
  return words.length ? h("span", { class: "mono" }, words.flatMap((w, i) => (i ? [" ", w] : [w]))) : "";
}

// What a release was made from: a build of its own source, or the release whose slug it runs.
function madeFrom(release) {
  const base = release.base;
  if (!base) return "built";
  if (base.reason === "promotion") return `from ${base.env} ${base.release}`;
  return `${base.reason === "config" ? "config on" : "copy of"} ${base.release}`;
}

function releaseRows(app, releases) {
  return releases.map((release) =>
    h("tr", { "data-release": release.id },
      h("td", {}, link(`#/apps/${app}/releases/${release.id}`, release.id), release.current ? [" ", badge("serves", "current")] : ""),
      h("td", { class: "from" }, madeFrom(release)),
      h("td", { class: "why" }, release.description || h("span", { class: "muted" }, "no description")),
      h("td", {}, release.created_by),
      h("td", {}, when(release.created_at)),
      h("td", { class: "mono hide-narrow" }, `${release.git.ref} ${release.git.commit.slice(0, 8)}`),
      h("td", { class: "hide-narrow" }, configChanges(release))));
}

function deployRows(app, deploys) {
  return deploys.map((deploy) =>
    h("tr", { "data-deploy": deploy.id },
      h("td", {}, link(`#/apps/${app}/deploys/${deploy.id}`, deploy.kind === "rollback" ? "rollback" : "deploy"), " ", deploy.release),
      h("td", {}, stateBadge(deploy.status)),
      h("td", {}, deploy.user),
      h("td", {}, when(deploy.started_at))));
}

async function appPage(app) {
  const [status, page, deploys] = await Promise.all([
    api("GET", appPath(app, "status")),
    api("GET", appPath(app, "releases")),
    api("GET", appPath(app, "deploys")).then((d) => d.deploys),
  ]);
  const running = deploys.find((d) => d.status === "RUNNING");
  const summary = h("div", { id: "summary" });
  const instances = h("div", { id: "instances" });
  const show = (current) => {
    summary.replaceChildren(facts([
      ["Release", current.current ? badge(current.current, "current") : h("span", { class: "muted" }, "none deployed")],
      ["Capacity", `${current.capacity.desired} (min ${current.capacity.min}, max ${current.capacity.max})`],
      ["Deploying", current.deploying
        ? (running ? link(`#/apps/${app}/deploys/${running.id}`, `${current.deploying.release} by ${current.deploying.by}`)
          : `${current.deploying.release} by ${current.deploying.by}`)
        : undefined],
    ]));
    instances.replaceChildren(table(["Instance", ["Zone", "hide-narrow"], "State", "Load balancer", "Release", ""], instanceRows(app, current), "No instances."));
  };
  show(status);
  render(
    h("div", { class: "crumbs" }, link("#/", "Apps"), " / ", app),
    h("h1", { tabindex: "-1" }, app),
    summary,
    h("div", { class: "actions" },
      status.previous
        ? h("a", { class: "button danger", href: `#/apps/${app}/rollback` }, `Roll back to ${status.previous}`)
        : h("button", { type: "button", disabled: true, title: "no earlier deployed release" }, "Roll back"),
      actionButton("Cycle all instances", {
        question: `Replace every instance of ${app}, a few at a time (at least 90% stay in service)?`,
        action: async () => {
          const cycling = await api("POST", appPath(app, "cycle"), {});
          location.hash = `#/apps/${app}/cycles/${cycling.refresh}`;
        },
      })),
    h("h2", {}, "Instances"),
    instances,
    h("h2", {}, "Releases"),
    table(["Release", "Made from", "Why", "Who", "When", ["Git", "hide-narrow"], ["Config", "hide-narrow"]], releaseRows(app, page.releases), "No releases yet: publish one with `slipway release`."),
    h("h2", {}, "Recent deploys"),
    table(["Deploy", "Status", "Who", "Started"], deployRows(app, deploys), "No deploys yet."),
  );
  every(POLL_MS.status, async () => show(await api("GET", appPath(app, "status"))));
}

// The strategy form of a deploy or a rollback; `start(strategy)` starts it and gives the deploy.
function strategyForm(title, defaults, start) {
  const batchBySize = defaults.batch_size !== undefined;
  const form = h("form", { class: "card", id: "deploy-form" },
    h("h2", {}, title),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "canary", checked: defaults.canary }),
      "Canary: one instance first"),
    h("label", {}, "Batches of",
      h("span", { class: "chips" },
        h("input", { type: "number", name: "batch", min: 1, max: batchBySize ? 1000 : 100, required: true,
          value: batchBySize ? defaults.batch_size : defaults.batch_percent, "aria-label": "batch" }),
        h("select", { name: "batch_unit", "aria-label": "batch unit" },
          h("option", { value: "batch_percent", selected: !batchBySize }, "% of the fleet"),
          h("option", { value: "batch_size", selected: batchBySize }, "instances")))),
    h("label", {}, "Watch alarms after each batch (seconds)",
      h("input", { type: "number", name: "bake_seconds", min: 0, max: 3600, required: true, value: defaults.bake_seconds })),
    h("p", { class: "hint" }, "The defaults are this app's rollout settings in cdk.json."),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, title)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = new FormData(form);
    const strategy = {
      canary: values.get("canary") === "on",
      [values.get("batch_unit")]: Number(values.get("batch")),
      bake_seconds: Number(values.get("bake_seconds")),
    };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const started = await start(strategy);
      notice("");
      location.hash = `#/apps/${started.app}/deploys/${started.id}`;
    } catch (error) {
      notice(error.message, "bad");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

async function releasePage(app, release) {
  const [shown, defaults] = await Promise.all([api("GET", appPath(app, "releases", release)), defaultStrategy(app)]);
  render(
    h("div", { class: "crumbs" }, link("#/", "Apps"), " / ", link(`#/apps/${app}`, app), " / ", release),
    h("h1", { tabindex: "-1" }, `${app} ${release}`, shown.current ? [" ", badge("current", "current")] : ""),
    h("section", { class: "card" }, facts([
      ["Why", shown.description || h("span", { class: "muted" }, "no description")],
      ["Who", shown.created_by],
      ["When", when(shown.created_at)],
      ["Git", h("span", { class: "mono" }, `${shown.git.ref} ${shown.git.commit}`)],
      ["Made from", shown.parent || "—"],
      ["Config", configChanges(shown) || h("span", { class: "muted" }, "unchanged")],
      ["Processes", Object.entries(shown.formation || {}).map(([type, count]) => `${type}×${count}`).join(", ") || "—"],
      ["Health check", shown.health_check ? shown.health_check.path : "—"],
    ])),
    strategyForm(`Deploy ${release}`, defaults, (strategy) => api("POST", appPath(app, "deploys"), { release, strategy })),
  );
}

async function defaultStrategy(app) {
  const listing = await api("GET", "apps");
  return (listing.apps.find((a) => a.name === app) || {}).strategy || {};
}

async function rollbackPage(app) {
  const [status, defaults] = await Promise.all([api("GET", appPath(app, "status")), defaultStrategy(app)]);
  const crumbs = h("div", { class: "crumbs" }, link("#/", "Apps"), " / ", link(`#/apps/${app}`, app), " / rollback");
  if (!status.previous) {
    render(crumbs, h("h1", { tabindex: "-1" }, `${app} has nothing to roll back to`),
      h("p", { class: "muted" }, "No release was current before the last rollout."));
    return;
  }
  render(
    crumbs,
    h("h1", { tabindex: "-1" }, `Roll ${app} back to ${status.previous}`),
    h("section", { class: "card" }, facts([
      ["Now", status.current ? badge(status.current, "current") : "—"],
      ["Back to", link(`#/apps/${app}/releases/${status.previous}`, status.previous)],
      ["How", `a new release copying ${status.previous} (its slug and config) rolls out, in one batch`],
    ])),
    strategyForm(`Roll back to ${status.previous}`, defaults, (strategy) => api("POST", appPath(app, "rollback"), { strategy })),
  );
}

function batchView(deploy, batch, index) {
  const converged = new Set(deploy.converged);
  const rolledBack = new Set(deploy.rolled_back);
  const label = index === 0 && deploy.strategy && deploy.strategy.canary ? "Canary" : `Batch ${index + 1}`;
  return h("div", { class: "batch", "data-batch": index, "data-state": batch.state },
    h("span", { class: "label" }, label, " ", stateBadge(batch.state)),
    h("span", { class: "chips" }, batch.instances.map((id) => {
      const state = rolledBack.has(id) ? "rolled back" : converged.has(id) || batch.state === "done" ? "switched"
        : batch.state === "current" ? "switching" : "waiting";
      const kind = { switched: "ok", switching: "warn", "rolled back": "bad" }[state];
      return h("span", { class: `badge ${kind || ""}`, "data-instance": id, title: state }, `${id} · ${state}`);
    })));
}

async function deployPage(app, id) {
  const body = h("div", { id: "deploy" });
  const show = (deploy) => {
    body.replaceChildren(
      h("section", { class: "card" }, facts([
        ["Status", stateBadge(deploy.status)],
        ["Step", deploy.step || "—"],
        ["What", `${deploy.kind} to ${deploy.release}${deploy.previous ? ` (from ${deploy.previous})` : ""}`],
        ["Who", deploy.user],
        ["Started", when(deploy.started_at)],
        ["Ended", deploy.stopped_at ? when(deploy.stopped_at) : undefined],
        ["Strategy", h("span", { class: "mono" }, JSON.stringify(deploy.strategy || {}))],
      ])),
      deploy.failure || deploy.error
        ? h("section", { class: "card", id: "failure" }, h("h2", {}, "Why it failed"),
            h("p", {}, typeof deploy.failure === "string" ? deploy.failure : JSON.stringify(deploy.failure || deploy.error)))
        : "",
      h("h2", {}, "Batches"),
      deploy.batches.length
        ? h("section", { class: "card", id: "batches" }, deploy.batches.map((b, i) => batchView(deploy, b, i)))
        : h("p", { class: "muted" }, "Planning the batches…"),
    );
  };
  const first = await api("GET", appPath(app, "deploys", id));
  // A rollback deploys a new release copying an earlier one: say which.
  const copied = first.kind === "rollback" ? ((await api("GET", appPath(app, "releases", first.release))).base || {}).release : null;
  render(
    h("div", { class: "crumbs" }, link("#/", "Apps"), " / ", link(`#/apps/${app}`, app), " / ", first.release),
    h("h1", { tabindex: "-1" }, copied ? `Rollback of ${app} to ${copied} as ${first.release}` : `Deploy of ${app} to ${first.release}`),
    body,
  );
  show(first);
  if (!FINISHED.has(first.status)) {
    every(POLL_MS.deploy, async () => {
      const deploy = await api("GET", appPath(app, "deploys", id));
      show(deploy);
      return !FINISHED.has(deploy.status);
    });
  }
}

async function cyclePage(app, refresh) {
  const body = h("div", { id: "cycle" });
  const show = (cycle) => body.replaceChildren(h("section", { class: "card" }, facts([
    ["Status", stateBadge(cycle.status)],
    ["Progress", h("div", { class: "progress", role: "progressbar", "aria-valuenow": cycle.percent, "aria-valuemin": 0, "aria-valuemax": 100 },
      h("span", { "data-percent": cycle.percent }))],
    ["Done", `${cycle.percent}%`],
    ["Reason", cycle.reason || undefined],
  ])));
  const first = await api("GET", appPath(app, "cycle", refresh));
  render(
    h("div", { class: "crumbs" }, link("#/", "Apps"), " / ", link(`#/apps/${app}`, app), " / cycle"),
    h("h1", { tabindex: "-1" }, `Cycling every instance of ${app}`),
    body,
  );
  show(first);
  sizeBars();
  if (!FINISHED.has(first.status)) {
    every(POLL_MS.cycle, async () => {
      const cycle = await api("GET", appPath(app, "cycle", refresh));
      show(cycle);
      sizeBars();
      return !FINISHED.has(cycle.status);
    });
  }
}

// The style sheet may not be inline (the content security policy): widths are set from the DOM.
function sizeBars() {
  for (const bar of document.querySelectorAll(".progress > span[data-percent]")) {
    bar.style.width = `${Math.max(0, Math.min(100, Number(bar.dataset.percent)))}%`;
  }
}

// Routing ----------------------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, appsPage],
  [/^#\/apps\/([a-z0-9-]+)$/, appPage],
  [/^#\/apps\/([a-z0-9-]+)\/releases\/(r[0-9]+)$/, releasePage],
  [/^#\/apps\/([a-z0-9-]+)\/rollback$/, rollbackPage],
  [/^#\/apps\/([a-z0-9-]+)\/deploys\/([A-Za-z0-9-]+)$/, deployPage],
  [/^#\/apps\/([a-z0-9-]+)\/cycles\/([A-Za-z0-9-]+)$/, cyclePage],
];

async function route() {
  generation += 1;
  const hash = location.hash || "#/";
  const found = ROUTES.map(([pattern, page]) => [hash.match(pattern), page]).find(([match]) => match);
  if (!found) {
    render(h("h1", { tabindex: "-1" }, "Not a console page"), h("p", {}, link("#/", "See the apps")));
    return;
  }
  const [match, page] = found;
  try {
    await page(...match.slice(1).map(decodeURIComponent));
    document.body.dataset.page = page.name;
  } catch (error) {
    render(h("h1", { tabindex: "-1" }, "Cannot show this page"), h("p", { class: "muted", id: "error" }, error.message));
  }
}

window.addEventListener("hashchange", () => {
  notice("");
  route();
});
route();
