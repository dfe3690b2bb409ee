// celery_node_worker.js -- the diag tasks bench/rabbitmq.py needs, on celery-node (npm), the
// non-Python Celery worker it races. Run by bench/rabbitmq.py with NODE_PATH pointing at the
// git-ignored bench/node/node_modules it installs: node celery_node_worker.js BROKER BACKEND
const celery = require("celery-node");

const [broker, backend] = process.argv.slice(2);
const worker = celery.createWorker(broker, backend, "celery");
worker.register("diag.noop", () => null);
worker.register("diag.add", (a, b) => a + b);
Promise.resolve(worker.start()).then(() => console.log("celery-node ready."));
console.log("celery-node ready.");
