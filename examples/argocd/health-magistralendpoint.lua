-- Argo CD health check for magistral.dev/MagistralEndpoint.
--
-- Install it in argocd-cm under the key
--   resource.customizations.health.magistral.dev_MagistralEndpoint
-- (examples/gitops/argocd/argocd-cm-health.yaml carries this file inline).
--
-- Healthy      Ready=True, Progressing not True, Degraded not True, and the operator has
--              observed the current spec (status.observedGeneration == metadata.generation).
-- Progressing  no status yet; the operator has not observed the current generation; or
--              Progressing=True (replicas starting, a rollout, scaling down).
-- Degraded     Degraded=True: the spec cannot be served as written (UnknownPool,
--              InsufficientGPUMemory, UnknownModel, InvalidSpec) or replicas cannot run
--              (Unschedulable, ReplicasFailing). The message says what to change.
-- Suspended    Ready=False with reason ScaledToZero (spec.scaling.maxReplicas is 0: paused).
--              Scaled to zero by the autoscaler (minReplicas 0) it stays Ready=True: Healthy.
--
-- Argo CD runs custom checks in a sandbox with only the base, table and a safe os library
-- (no string or math library, and strings have no methods), on gopher-lua (Lua 5.1).
-- tests/unit/test_argocd_health.py runs it in the same sandbox on a real Lua 5.1.

local function find_condition(conditions, condition_type)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition == nil then
    return fallback
  end
  local text = condition.reason or fallback
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local hs = {}
local status = obj.status

if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local degraded = find_condition(status.conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end

local progressing = find_condition(status.conditions, "Progressing")
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing, "Progressing")
  return hs
end

local ready = find_condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = describe(ready, "ScaledToZero")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the endpoint to become Ready")
return hs
