// Replicate's official JS client, unmodified, against the bridge.
// node client.mjs <baseUrl> <command> [json args]; prints JSON lines.
import Replicate from "replicate";

const [baseUrl, command, rawArgs] = process.argv.slice(2);
const args = rawArgs ? JSON.parse(rawArgs) : {};
const replicate = new Replicate({ auth: "r8_test", baseUrl: `${baseUrl}/v1` });
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");

if (command === "stream") {
  // replicate.stream(): each output event's text, in order.
  const chunks = [];
  for await (const event of replicate.stream(args.model, { input: args.input })) {
    if (event.event === "output") chunks.push(String(event));
    if (event.event === "done") print({ done: JSON.parse(event.data) });
  }
  print({ chunks });
} else if (command === "cancel") {
  // Stream a prediction, cancel it after three outputs, read to the end.
  let prediction = await replicate.predictions.create({ model: args.model, input: args.input, stream: true });
  const response = await fetch(prediction.urls.stream, { headers: { Accept: "text/event-stream" } });
  const decoder = new TextDecoder();
  let text = "";
  let outputs = 0;
  let canceled = null;
  for await (const piece of response.body) {
    text += decoder.decode(piece, { stream: true });
    outputs = (text.match(/^event: output$/gm) || []).length;
    if (outputs >= 3 && canceled === null) {
      canceled = await replicate.predictions.cancel(prediction.id);
    }
  }
  prediction = await replicate.predictions.get(prediction.id);
  print({ id: prediction.id, canceledStatus: canceled.status, status: prediction.status,
          lastEvent: text.trim().split("\n\n").pop() });
} else if (command === "deployment") {
  // replicate.deployments: get one, create a prediction on it, wait for it.
  const [owner, name] = args.deployment.split("/");
  const deployment = await replicate.deployments.get(owner, name);
  let prediction = await replicate.deployments.predictions.create(owner, name, { input: args.input });
  prediction = await replicate.wait(prediction, { interval: 50 });
  print({ deployment, status: prediction.status, output: prediction.output, model: prediction.model });
} else if (command === "run") {
  print({ output: await replicate.run(args.ref, { input: args.input }) });
} else if (command === "webhook-valid") {
  // validateWebhook from the JS client, on a delivery the test recorded.
  const { validateWebhook } = await import("replicate");
  const valid = await validateWebhook({ id: args.id, timestamp: args.timestamp,
    signature: args.signature, body: args.body, secret: args.secret });
  print({ valid });
} else {
  throw new Error(`unknown command ${command}`);
}
