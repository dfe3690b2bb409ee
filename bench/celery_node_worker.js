// celery_node_worker.js -- the diag tasks bench/throughput.py and bench/rabbitmq.py need, on
// celery-node (npm), the non-Python Celery worker they race. Run by them with NODE_PATH pointing
// at the git-ignored bench/node/node_modules they install: node celery_node_worker.js BROKER
// BACKEND (a redis:// or amqp:// broker, a redis:// backend)
const celery = require("celery-node");

const [broker, backend] = process.argv.slice(2);
const worker = celery.createWorker(broker, backend, "celery");
worker.register("diag.noop", () => null);
worker.register("diag.add", (a, b) => a + b);
Promise.resolve(worker.start()).then(() => console.log("celery-node ready."));
console.log("celery-node ready.");
