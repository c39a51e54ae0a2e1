// An Express app as developers write one. Loopback only: the tests' instance shares this
// machine's network (an instance behind a load balancer listens on all addresses).
const express = require("express");

const app = express();
app.get("/", (req, res) => res.send(`hello from express ${require("express/package.json").version}\n`));
app.get("/health", (req, res) => res.send("ok\n"));
app.get("/where", (req, res) => res.json({ node: process.version, cwd: process.cwd(), home: process.env.HOME }));
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log(`listening on ${process.env.PORT}`));
